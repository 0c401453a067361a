//! The safetensors checkpoint reader and model load: any file is a model or an error, and the
//! model built is never larger than the file.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "scratch.rs"]
mod scratch;

fuzz_target!(|data: &[u8]| {
    let p = scratch::scratch("checkpoint");
    std::fs::write(&p, data).unwrap();
    let dev = candle_core::Device::Cpu;
    let _ = imixer::checkpoint::read(&p, &dev);
    if let Ok(net) = imixer::MixerNet::load(&p, None, &dev) {
        assert!(net.params.num_params() <= data.len());
    }
});
