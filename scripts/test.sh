#!/usr/bin/env bash
# The whole test suite, Rust and Python, from a clean clone (the README's
# test command; .ci/run calls it after fmt, clippy and docs):
#   1. cargo test --release                    the core crate
#   2. pip install ./python                    the Python package, built by maturin
#   3. pytest: the numpy API, the PyTorch module, `elmo embed`'s HDF5 files
#      read with h5py; then the Ray Data recipe on a local two-worker cluster
#   4. pytest: the Keras layer, ELMoForManyLangs models (numpy API and Keras)
#      and the examples under tensorflow, jax and torch
# Python test dependencies come from python/requirements-test.txt (installed
# if missing; PyPI's torch is the large CUDA build). ELMO_SKIP_RUST=1 skips 1.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
pip_q() { "$PY" -m pip install --quiet --disable-pip-version-check "$@" 2>&1 | grep -v "WARNING: Running pip as the 'root'" || true; }

if [ "${ELMO_SKIP_RUST:-0}" != 1 ]; then
  echo "== cargo test --release"
  cargo test --release
else
  # The corpus tests run the CLI.
  cargo build --release --quiet --bin elmo
fi

echo "== Python test dependencies (python/requirements-test.txt)"
pip_q -r python/requirements-test.txt
echo "== pip install ./python"
pip_q --force-reinstall --no-deps ./python
"$PY" -c "import elmo; print('elmo', elmo.__version__, 'from', elmo.__file__)"

# One pytest process per framework: TensorFlow and torch.optim in one
# process abort (two LLVMs register the same options), a clash of theirs.
echo "== pytest the numpy API, the PyTorch module and the corpus files (h5py; the CLI from step 1)"
"$PY" -m pytest -q python/tests/test_numpy.py python/tests/test_torch.py python/tests/test_corpus.py
echo "== pytest the Ray Data recipe (a local cluster, two worker actors)"
"$PY" -m pytest -q python/tests/test_ray.py
for backend in tensorflow jax torch; do
  echo "== pytest the Keras layer, ELMoForManyLangs models and the examples (KERAS_BACKEND=$backend)"
  KERAS_BACKEND=$backend "$PY" -m pytest -q python/tests/test_keras.py python/tests/test_efml.py python/tests/test_examples.py
done
echo "all suites passed"
