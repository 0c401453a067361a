//! The training-config TOML: parse, validate, resolve the model configuration (without building
//! it) and check the transforms at the model's size, as `imixer train` does before a run.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = toml::from_str::<imixer::train::TrainConfig>(text) else {
        return;
    };
    if cfg.validate().is_err() {
        return;
    }
    if let Ok(m) = imixer::train::trainer::resolve_model(&cfg, 10) {
        let mut t = cfg.train_transform.clone();
        t.image_size = m.img_size;
        t.in_chans = m.in_chans;
        let _ = t.validate();
        let mut e = cfg.eval_transform.clone();
        e.image_size = m.img_size;
        e.in_chans = m.in_chans;
        let _ = e.validate();
        let _ = toml::to_string(&cfg).unwrap();
    }
});
