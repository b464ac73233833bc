//! An ELMoForManyLangs model folder's configuration: `config.json` names the
//! model config (`config_path`), found as the package finds it: that path
//! in the folder, else its file name in the folder, else one of the
//! package's two stock configs by file name.

use crate::error::{Error, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The file names of the package's stock configs
/// (`elmoformanylangs/configs/*.json` of version 0.0.4.post2): the released
/// models' `config.json` name one of them. Both files hold the same
/// hyper-parameters, [`stock_config`]'s (restated as facts).
const STOCK: [&str; 2] = ["cnn_0_100_512_4096_sample.json", "cnn_50_100_512_4096_sample.json"];

/// The stock configs' hyper-parameters: 7 filters up to 1024, 2 highways,
/// a 100-dim word embedding, 50-dim characters, 50 characters per token,
/// LSTM 4096 / 512 in 2 layers, both clips 3.
fn stock_config(name: &str) -> Option<Value> {
    STOCK.contains(&name).then(|| {
        serde_json::json!({
            "encoder": {"name": "elmo", "projection_dim": 512, "cell_clip": 3, "proj_clip": 3,
                        "dim": 4096, "n_layers": 2},
            "token_embedder": {"name": "cnn", "activation": "relu",
                               "filters": [[1, 32], [2, 32], [3, 64], [4, 128], [5, 256], [6, 512], [7, 1024]],
                               "n_highway": 2, "word_dim": 100, "char_dim": 50,
                               "max_characters_per_token": 50},
        })
    })
}

/// The model config the package would use for `dir`, and where it came
/// from (a path, or `stock config <name>`).
pub fn read_model_config(dir: &Path) -> Result<(Value, String)> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| Error::Options(format!("{}: not valid JSON: {e}", cfg_path.display())))?;
    let named = v.get("config_path").and_then(Value::as_str).ok_or_else(|| {
        Error::Options(format!(
            "{}: no \"config_path\" naming the model config",
            cfg_path.display()
        ))
    })?;
    let file_name = Path::new(named).file_name().map(PathBuf::from).unwrap_or_default();
    for candidate in [dir.join(named), dir.join(&file_name)] {
        if candidate.is_file() {
            let text = std::fs::read_to_string(&candidate).map_err(|e| Error::io(&candidate, e))?;
            let v = serde_json::from_str(&text)
                .map_err(|e| Error::Options(format!("{}: not valid JSON: {e}", candidate.display())))?;
            return Ok((v, candidate.display().to_string()));
        }
    }
    let name = file_name.to_string_lossy();
    stock_config(&name)
        .map(|v| (v, format!("stock config {name}")))
        .ok_or_else(|| {
            Error::Options(format!(
                "{}: the model config {named:?} is neither in {} nor one of the package's stock configs ({})",
                cfg_path.display(),
                dir.display(),
                STOCK.join(", ")
            ))
        })
}

fn get<'a>(v: &'a Value, path: &str, what: &str) -> Result<&'a Value> {
    let mut cur = v;
    for k in path.split('.') {
        cur = cur
            .get(k)
            .ok_or_else(|| Error::Options(format!("{what}: missing '{path}'")))?;
    }
    Ok(cur)
}

fn count(v: &Value, path: &str, what: &str) -> Result<u64> {
    let x = get(v, path, what)?;
    x.as_u64()
        .ok_or_else(|| Error::Options(format!("{what}: '{path}' must be a non-negative integer, got {x}")))
}

/// Our options (bilm-tf's layout, `family: elmoformanylangs`) for a model
/// config, with `char_rows` and `word_rows` the lexicons' sizes.
pub fn options_value(cfg: &Value, what: &str, char_rows: usize, word_rows: usize) -> Result<Value> {
    let name = |path: &str| get(cfg, path, what).map(|x| x.as_str().unwrap_or("").to_ascii_lowercase());
    if name("token_embedder.name")? != "cnn" {
        return Err(Error::Options(format!(
            "{what}: token_embedder {} is not supported: only the character CNN ('cnn') of the released models",
            get(cfg, "token_embedder.name", what)?
        )));
    }
    if name("encoder.name")? != "elmo" {
        return Err(Error::Options(format!(
            "{what}: encoder {} is not supported: only 'elmo' (the biLM of the released models)",
            get(cfg, "encoder.name", what)?
        )));
    }
    if count(cfg, "token_embedder.char_dim", what)? == 0 {
        return Err(Error::Options(format!(
            "{what}: char_dim is 0: models without characters are not supported"
        )));
    }
    // `if self.memory_cell_clip_value:` in the package: 0 means no clip.
    let clip = |path: &str| -> Result<Value> {
        match get(cfg, path, what)? {
            Value::Null => Ok(Value::Null),
            x => {
                let c = x
                    .as_f64()
                    .ok_or_else(|| Error::Options(format!("{what}: '{path}' must be a number, got {x}")))?;
                Ok(if c == 0.0 { Value::Null } else { c.into() })
            }
        }
    };
    let word_dim = count(cfg, "token_embedder.word_dim", what)?;
    let mut o = serde_json::json!({
        "family": "elmoformanylangs",
        "lstm": {
            "dim": get(cfg, "encoder.dim", what)?,
            "projection_dim": get(cfg, "encoder.projection_dim", what)?,
            "n_layers": get(cfg, "encoder.n_layers", what)?,
            "cell_clip": clip("encoder.cell_clip")?,
            "proj_clip": clip("encoder.proj_clip")?,
            "use_skip_connections": true,
        },
        "char_cnn": {
            "embedding": {"dim": get(cfg, "token_embedder.char_dim", what)?},
            "filters": get(cfg, "token_embedder.filters", what)?,
            "n_highway": get(cfg, "token_embedder.n_highway", what)?,
            "n_characters": char_rows + 1,
            "max_characters_per_token": get(cfg, "token_embedder.max_characters_per_token", what)?,
            "activation": get(cfg, "token_embedder.activation", what)?,
        },
    });
    if word_dim > 0 {
        o["word_embedding"] = serde_json::json!({"dim": word_dim, "n_words": word_rows + 1});
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(config_path: &str, files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("config.json"),
            serde_json::json!({ "config_path": config_path }).to_string(),
        )
        .unwrap();
        for (name, text) in files {
            std::fs::write(d.path().join(name), text).unwrap();
        }
        d
    }

    #[test]
    fn the_model_config_is_found_as_the_package_finds_it() {
        // The path as written, relative to the folder.
        let d = folder("m.json", &[("m.json", r#"{"x": 1}"#)]);
        let (v, from) = read_model_config(d.path()).unwrap();
        assert_eq!((v["x"].as_u64(), from.ends_with("m.json")), (Some(1), true));
        // An absolute path elsewhere: its file name in the folder.
        let d = folder("/nowhere/at/all/m.json", &[("m.json", r#"{"x": 2}"#)]);
        assert_eq!(read_model_config(d.path()).unwrap().0["x"].as_u64(), Some(2));
        // Neither: a stock config by file name.
        let d = folder("/home/someone/configs/cnn_50_100_512_4096_sample.json", &[]);
        let (v, from) = read_model_config(d.path()).unwrap();
        assert_eq!(from, "stock config cnn_50_100_512_4096_sample.json");
        assert_eq!(v["encoder"]["dim"].as_u64(), Some(4096));
        let o = options_value(&v, &from, 100, 1000).unwrap();
        let o = crate::options::Options::from_value(&o).unwrap();
        assert_eq!((o.n_filters(), o.word_dim(), o.char_cnn.n_characters), (2048, 100, 101));
        // None of them.
        let d = folder("mine.json", &[]);
        let e = read_model_config(d.path()).unwrap_err().to_string();
        assert!(e.contains("mine.json") && e.contains("stock configs"), "{e}");
    }

    #[test]
    fn configs_the_engine_does_not_compute_are_refused() {
        let (v, _) = read_model_config(folder("cnn_0_100_512_4096_sample.json", &[]).path()).unwrap();
        let mut lstm = v.clone();
        lstm["token_embedder"]["name"] = "lstm".into();
        assert!(
            options_value(&lstm, "c", 10, 10)
                .unwrap_err()
                .to_string()
                .contains("token_embedder")
        );
        let mut enc = v.clone();
        enc["encoder"]["name"] = "lstm".into();
        assert!(
            options_value(&enc, "c", 10, 10)
                .unwrap_err()
                .to_string()
                .contains("encoder")
        );
        let mut nochars = v;
        nochars["token_embedder"]["char_dim"] = 0.into();
        assert!(
            options_value(&nochars, "c", 10, 10)
                .unwrap_err()
                .to_string()
                .contains("char_dim")
        );
    }
}
