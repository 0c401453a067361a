//! [`simd_kernel!`]: one loop's source, compiled for the baseline and for AVX-512, chosen at run
//! time by [`crate::kernels::isa`].
//!
//! Why a macro of our own and not the `multiversion` crate: the choice must follow the
//! process-wide [`crate::kernels::Isa`] setting (so that tests and benchmarks can run the AVX2
//! code on an AVX-512 CPU and compare the bits), which `multiversion`'s dispatcher does not
//! expose. The mechanism itself is the standard one: the body is an `#[inline(always)]` function,
//! and a `#[target_feature]` wrapper calls it, so the compiler inlines the body (and the
//! `#[inline(always)]` helpers it calls: `Float`'s erf/exp, `mul_add`) into a function compiled
//! with 512-bit registers. Generated code evaluates the same operations in the same order in both
//! versions — only the number of lanes per instruction changes — so results are bit-identical.
//!
//! The body must not call closures or non-inlined generic functions in its hot loop (those would
//! be compiled once, without AVX-512); the kernels pass plain slices and scalars.

/// Defines `fn NAME<GENERICS>(ARGS) -> RET` whose body runs with AVX-512 when
/// [`crate::kernels::isa`] says so, and with the build's baseline otherwise.
macro_rules! simd_kernel {
    (
        $(#[$meta:meta])*
        $vis:vis fn $name:ident $(<$($gen:ident : $bound:path),+>)? ($($arg:ident : $ty:ty),* $(,)?)
            $(-> $ret:ty)? $body:block
    ) => {
        $(#[$meta])*
        #[inline]
        $vis fn $name $(<$($gen: $bound),+>)? ($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body $(<$($gen: $bound),+>)? ($($arg: $ty),*) $(-> $ret)? $body

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
            fn avx512 $(<$($gen: $bound),+>)? ($($arg: $ty),*) $(-> $ret)? {
                body($($arg),*)
            }

            match $crate::kernels::isa() {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `isa()` is `Avx512` only when the running CPU reported AVX-512
                // F/BW/DQ/VL (`Isa::detect`; `set_isa` never raises it above that), which are
                // exactly the features `avx512` is compiled with.
                $crate::kernels::Isa::Avx512 => unsafe { avx512($($arg),*) },
                _ => body($($arg),*),
            }
        }
    };
}

pub(crate) use simd_kernel;

#[cfg(test)]
mod tests {
    use crate::kernels::cpu::Float;
    use crate::kernels::{isa, set_isa, Isa};

    simd_kernel! {
        fn scaled_sum<T: Float>(x: &[T], y: &mut [T], a: T) -> usize {
            for (y, &x) in y.iter_mut().zip(x) {
                *y += a * x.exp();
            }
            x.len()
        }
    }

    #[test]
    fn both_compilations_give_the_same_bits() {
        let x: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin() * 5.0).collect();
        let run = |which| {
            set_isa(which);
            let mut y = vec![1f32; x.len()];
            assert_eq!(scaled_sum(&x, &mut y, 0.3), x.len());
            y
        };
        let detected = isa();
        let (base, wide) = (run(Isa::Baseline), run(Isa::Avx512));
        set_isa(detected);
        assert!(base
            .iter()
            .zip(&wide)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}
