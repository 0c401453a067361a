//! The vendored candle's n-ary custom op (vendor/README.md, patch 7): gradients reach every input
//! in input order, also with a constant among the inputs, and a backward that returns the wrong
//! number of gradients is an error rather than a silent mismatch.

use candle_core::{CpuStorage, CustomOpN, Device, Layout, Result, Shape, Tensor, Var};

/// y = Σᵢ cᵢ·xᵢ elementwise over n same-shaped f32 inputs.
struct WeightedSum {
    coefficients: Vec<f32>,
    /// Return one gradient fewer than there are inputs (a broken op).
    drop_one: bool,
}

impl CustomOpN for WeightedSum {
    fn name(&self) -> &'static str {
        "weighted-sum"
    }

    fn cpu_fwd(&self, args: &[(&CpuStorage, &Layout)]) -> Result<(CpuStorage, Shape)> {
        let shape = args[0].1.shape().clone();
        let mut y = vec![0f32; shape.elem_count()];
        for ((storage, layout), c) in args.iter().zip(&self.coefficients) {
            let CpuStorage::F32(x) = storage else {
                candle_core::bail!("f32 only")
            };
            let Some((start, end)) = layout.contiguous_offsets() else {
                candle_core::bail!("contiguous only")
            };
            for (y, x) in y.iter_mut().zip(&x[start..end]) {
                *y += c * x;
            }
        }
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(&self, args: &[Tensor], _res: &Tensor, grad: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let mut grads: Vec<_> = self
            .coefficients
            .iter()
            .map(|&c| grad.affine(f64::from(c), 0.0).map(Some))
            .collect::<Result<_>>()?;
        assert_eq!(grads.len(), args.len());
        if self.drop_one {
            grads.pop();
        }
        Ok(grads)
    }
}

#[test]
fn every_input_gets_its_gradient_in_order() -> Result<()> {
    let dev = Device::Cpu;
    let vars: Vec<Var> = (0..5)
        .map(|i| Var::new(&[i as f32, 1.0, -2.0][..], &dev))
        .collect::<Result<_>>()?;
    // A constant among the inputs: it takes part in the forward and shifts no gradient.
    let constant = Tensor::new(&[10f32, 20.0, 30.0][..], &dev)?;
    let mut inputs: Vec<&Tensor> = vars.iter().map(|v| v.as_tensor()).collect();
    inputs.insert(2, &constant);
    let coefficients = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let op = WeightedSum {
        coefficients: coefficients.clone(),
        drop_one: false,
    };
    let y = Tensor::apply_op_n(&inputs, op)?;
    // 1·v0 + 2·v1 + 3·constant + 4·v2 + 5·v3 + 6·v4, first element: v_i[0] = i.
    assert_eq!(y.to_vec1::<f32>()?[0], 2.0 + 30.0 + 8.0 + 15.0 + 24.0);
    let grads = (y * 2.0)?.sum_all()?.backward()?;
    let var_coefficients = [1.0, 2.0, 4.0, 5.0, 6.0];
    for (v, c) in vars.iter().zip(var_coefficients) {
        let g = grads
            .get(v)
            .expect("a variable without a gradient")
            .to_vec1::<f32>()?;
        assert_eq!(g, vec![2.0 * c; 3]);
    }
    Ok(())
}

#[test]
fn a_backward_with_the_wrong_gradient_count_is_an_error() -> Result<()> {
    let dev = Device::Cpu;
    let (a, b) = (
        Var::new(&[1f32, 2.0][..], &dev)?,
        Var::new(&[3f32, 4.0][..], &dev)?,
    );
    let op = WeightedSum {
        coefficients: vec![1.0, 1.0],
        drop_one: true,
    };
    let y = Tensor::apply_op_n(&[a.as_tensor(), b.as_tensor()], op)?;
    let err = y.sum_all()?.backward().unwrap_err().to_string();
    assert!(
        err.contains("weighted-sum") && err.contains("1 gradients for 2 inputs"),
        "{err}"
    );
    Ok(())
}

#[test]
fn no_inputs_is_an_error() {
    let op = WeightedSum {
        coefficients: vec![],
        drop_one: false,
    };
    let err = Tensor::apply_op_n(&[], op).unwrap_err().to_string();
    assert!(err.contains("at least one input"), "{err}");
}
