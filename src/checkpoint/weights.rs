//! Which of the weights a checkpoint may hold a command uses: the trained ones or their moving
//! average. Its own module because both the reader ([`super::open`]) and its errors name it.

/// Which weights of a checkpoint to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Weights {
    /// The trained weights.
    #[default]
    Model,
    /// The exponential moving average of the weights (timm's `state_dict_ema`, imixer's
    /// `ema.` tensors).
    Ema,
}
