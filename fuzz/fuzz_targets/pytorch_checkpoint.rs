//! The PyTorch checkpoint reader (pickle machine, zip and legacy containers, tensor views) and
//! model load from it: any file is a model or an error, and the model built is never larger than
//! the file. Seeds: `tests/fixtures/pytorch/*` (copied into `corpus/pytorch_checkpoint`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "scratch.rs"]
mod scratch;

fuzz_target!(|data: &[u8]| {
    let _ = imixer::checkpoint::torch::pickle::read(&mut std::io::Cursor::new(data));
    let p = scratch::scratch("pytorch_checkpoint");
    std::fs::write(&p, data).unwrap();
    let dev = candle_core::Device::Cpu;
    for weights in [imixer::checkpoint::Weights::Model, imixer::checkpoint::Weights::Ema] {
        if let Ok(c) = imixer::checkpoint::Checkpoint::open(&p, weights) {
            let _ = c.decode(&dev);
        }
    }
    if let Ok(net) = imixer::MixerNet::load(&p, None, &dev) {
        assert!(net.params.num_params() <= data.len());
    }
});
