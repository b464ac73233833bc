//! The sentence-level example of the original Keras `ELMoEmbedding` layer,
//! line by line:
//!
//! ```python
//! model = Sequential()
//! model.add(ELMoEmbedding(idx2word=idx2word, output_mode="default", trainable=True))
//! model.add(Dropout(0.5))
//! model.add(Dense(50, activation='relu'))
//! model.add(Dense(1, activation='sigmoid'))
//! model.compile(loss='binary_crossentropy', optimizer=Adam(lr=0.001), metrics=['accuracy'])
//! model.fit(x_train, y_train, batch_size=2, epochs=5, validation_data=(x_test, y_test))
//! ```
//!
//! `cargo run --release --example sentiment_sentence [-- --aclimdb DIR | --model M ...]`

mod common;

use elmo::layer::{ElmoEmbedding, OutputMode};
use elmo::nn::{Act, Dense, Dropout};
use elmo::optim::Adam;
use elmo::train::{FitOptions, Loss, Metric, Sequential};

fn main() {
    common::exit_on_error(run());
}

fn run() -> elmo::Result<()> {
    let args = common::args();
    let (vocab, x_train, y_train, x_test, y_test) = common::data(&args)?;
    let elmo_model = common::model(&args)?;

    let mut model = Sequential::new(1);
    model.add(ElmoEmbedding::new(
        elmo_model,
        vocab.idx2word.clone(),
        OutputMode::Default,
        true,
    )?);
    model.add(Dropout::new(0.5));
    model.add(Dense::new(50, Act::Relu));
    model.add(Dense::new(1, Act::Sigmoid));
    model.build(&[args.maxlen])?;
    model.compile(Loss::BinaryCrossentropy, Adam::new(0.001), &[Metric::Accuracy]);
    print!("{}", model.summary()?);
    let history = model.fit(
        &x_train,
        &y_train,
        &FitOptions {
            batch_size: 2,
            epochs: args.epochs,
            validation_data: Some((&x_test, &y_test)),
            ..FitOptions::default()
        },
    )?;
    common::report(&history);
    Ok(())
}
