"""Native Keras 3 pruning on the builtin digits CNN: sparsity reached, accuracy kept, plain
models out, exact channel surgery, and the zeros surviving the ONNX export."""

import re

import numpy as np
import pytest

from workbench.core.errors import TrialPruned
from workbench.models import accuracy
from workbench.variants.prune import magnitude


@pytest.fixture(scope="module")
def original(digits_model):
    return digits_model.load_keras()


@pytest.fixture(scope="module")
def unstructured(original, digits):
    """(sparsity, scope) -> pruned model, each built once for the whole module."""
    cache = {}

    def get(sparsity, scope="global"):
        if (sparsity, scope) not in cache:
            cache[sparsity, scope] = magnitude.prune_unstructured(
                original, digits.x_train, digits.y_train, sparsity, scope=scope)
        return cache[sparsity, scope]

    return get


@pytest.fixture(scope="module")
def channels_half(original, digits):
    return magnitude.prune_channels(original, digits.x_train, digits.y_train, 0.5)


def _kernels(model):
    return [l.kernel.numpy() for l in magnitude._kernel_layers(model)]


def _acc(model, digits):
    return accuracy(model.predict(digits.x_eval, batch_size=256, verbose=0), digits.y_eval)


@pytest.mark.parametrize("sparsity", [0.5, 0.8])
def test_unstructured_reaches_target_and_stays_plain(unstructured, original, digits, sparsity):
    m = unstructured(sparsity)
    assert abs(magnitude.kernel_sparsity(m) - sparsity) <= 0.01
    assert _acc(m, digits) >= (95.0 if sparsity == 0.5 else 90.0)
    # same architecture, no wrapper layers / mask variables, not compiled
    assert [type(l) for l in m.layers] == [type(l) for l in original.layers]
    assert len(m.weights) == len(original.weights)
    assert [w.shape for w in m.get_weights()] == [w.shape for w in original.get_weights()]
    assert not m.compiled
    # biases are not pruned (a few are exactly zero already: ReLU units that never fired)
    biases = np.concatenate([l.bias.numpy() for l in magnitude._kernel_layers(m)])
    assert np.mean(biases == 0) < 0.05
    assert m.predict(digits.x_eval[:5], verbose=0).shape == (5, 10)


def test_input_model_is_not_modified(unstructured, channels_half, original, digits_model):
    unstructured(0.5), channels_half  # make sure both ran on `original`
    for a, b in zip(original.get_weights(), digits_model.load_keras().get_weights()):
        np.testing.assert_array_equal(a, b)
    assert magnitude.kernel_sparsity(original) == 0.0


def test_global_and_layer_scope(unstructured, digits):
    glob, per_layer = unstructured(0.5, "global"), unstructured(0.5, "layer")
    assert abs(magnitude.kernel_sparsity(glob) - 0.5) <= 0.01
    assert abs(magnitude.kernel_sparsity(per_layer) - 0.5) <= 0.01
    layer_sp = [np.mean(k == 0) for k in _kernels(per_layer)]
    assert all(abs(s - 0.5) <= 0.01 for s in layer_sp), layer_sp
    # global ranking prunes the big Dense kernel harder than the tiny first conv
    glob_sp = [np.mean(k == 0) for k in _kernels(glob)]
    assert max(glob_sp) - min(glob_sp) > 0.1, glob_sp
    assert _acc(per_layer, digits) >= 93.0


def test_one_shot_and_argument_checks(original, digits):
    m = magnitude.prune_unstructured(original, None, None, 0.6, finetune_epochs=0)
    assert abs(magnitude.kernel_sparsity(m) - 0.6) <= 0.001
    # one-shot keeps exactly the largest-magnitude weights of the original
    kept = np.concatenate([np.abs(k[k != 0]) for k in _kernels(m)])
    dropped_max = max(np.abs(o[p == 0]).max() for o, p in zip(_kernels(original), _kernels(m)))
    assert kept.min() >= dropped_max
    with pytest.raises(ValueError):
        magnitude.prune_unstructured(original, None, None, 0.99, finetune_epochs=0)
    with pytest.raises(ValueError):
        magnitude.prune_unstructured(original, None, None, 0.5, finetune_epochs=0, scope="net")
    with pytest.raises(TrialPruned, match="train split"):
        magnitude.prune_unstructured(original, None, None, 0.5)
    with pytest.raises(TrialPruned, match="train split"):
        magnitude.prune_channels(original, None, None, 0.5)


def _prunable_params(model):
    """Params of every Conv2D and hidden Dense (all kernel layers but the output one)."""
    return sum(l.count_params() for l in magnitude._kernel_layers(model)[:-1])


def test_channels_shrink_model_and_keep_accuracy(channels_half, original, digits):
    import keras

    m = channels_half
    convs = [l for l in m.layers if isinstance(l, keras.layers.Conv2D)]
    orig_convs = [l for l in original.layers if isinstance(l, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [max(1, round(0.5 * c.filters)) for c in orig_convs]
    dense = [l for l in m.layers if isinstance(l, keras.layers.Dense)]
    assert dense[0].units == 32 and dense[-1].units == 10
    # Flatten of the 4x4 map with 32 kept channels feeds 4*4*32 rows
    assert dense[0].kernel.shape == (4 * 4 * 32, 32)
    before, after = _prunable_params(original), _prunable_params(m)
    assert after <= (1 - 0.45) * before, (before, after)
    assert m.count_params() < 0.5 * original.count_params()
    assert _acc(m, digits) >= 93.0
    assert not m.compiled


def _zeroed_copy(model, kept):
    """Copy of ``model`` with the removed filters/units silenced: their kernel columns and
    biases, and the gamma/beta of a BatchNormalization right after them, set to zero."""
    import keras

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    removed = None
    for layer in copy.layers:
        w = layer.get_weights()
        if layer.name in kept:
            removed = np.setdiff1d(np.arange(w[0].shape[-1]), kept[layer.name])
            w[0][..., removed] = 0
            w[1][removed] = 0
            layer.set_weights(w)
        elif isinstance(layer, keras.layers.BatchNormalization) and removed is not None:
            w[0][removed] = 0  # gamma
            w[1][removed] = 0  # beta
            layer.set_weights(w)
    return copy


def test_channel_rebuild_is_exact(original, digits):
    import keras

    kept = magnitude._kept_channels(original, 0.5)
    assert set(kept) == {l.name for l in magnitude._kernel_layers(original)[:-1]}
    # first conv (no input slicing): the kept filters are the largest-L1 ones
    first = magnitude._kernel_layers(original)[0]
    l1 = np.abs(first.kernel.numpy()).sum(axis=(0, 1, 2))
    np.testing.assert_array_equal(kept[first.name], np.sort(np.argsort(-l1, kind="stable")[:8]))

    rebuilt = magnitude.prune_channels(original, None, None, 0.5, finetune_epochs=0)
    assert isinstance(rebuilt, keras.Sequential)
    x = digits.x_eval
    np.testing.assert_allclose(rebuilt.predict(x, verbose=0),
                               _zeroed_copy(original, kept).predict(x, verbose=0), atol=1e-5)


def test_channel_rebuild_functional_chain_with_batchnorm(digits):
    import keras
    from keras import layers

    keras.utils.set_random_seed(1)
    inp = keras.Input((8, 8, 1))
    x = layers.Conv2D(8, 3, padding="same", name="c1")(inp)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.ReLU(name="relu")(x)
    x = layers.AveragePooling2D(2, name="pool")(x)
    x = layers.Conv2D(12, 3, activation="relu", name="c2")(x)
    x = layers.Dropout(0.2, name="drop")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dense(16, activation="relu", name="d1")(x)
    out = layers.Dense(10, activation="softmax", name="out")(x)
    model = keras.Model(inp, out)
    rng = np.random.default_rng(0)
    bn = model.get_layer("bn")
    bn.set_weights([rng.uniform(0.5, 1.5, 8), rng.normal(0, 0.3, 8), rng.normal(0, 0.3, 8),
                    rng.uniform(0.5, 2.0, 8)])

    kept = magnitude._kept_channels(model, 0.3)
    rebuilt = magnitude.prune_channels(model, None, None, 0.3, finetune_epochs=0)
    assert [rebuilt.get_layer(n).filters for n in ("c1", "c2")] == [6, 8]  # round(5.6), round(8.4)
    assert rebuilt.get_layer("d1").units == 11 and rebuilt.get_layer("out").units == 10
    for a, b in zip(rebuilt.get_layer("bn").get_weights(), bn.get_weights()):
        np.testing.assert_array_equal(a, b[kept["c1"]])
    np.testing.assert_allclose(rebuilt.predict(digits.x_eval, verbose=0),
                               _zeroed_copy(model, kept).predict(digits.x_eval, verbose=0), atol=1e-5)


def test_unsupported_layers_are_pruned_trials():
    import keras
    from keras import layers

    seq = keras.Sequential([keras.Input((8, 8, 1)), layers.Conv2D(4, 3, name="c"),
                            layers.Conv2DTranspose(4, 3, name="up"), layers.Flatten(),
                            layers.Dense(10)])
    msg = "channel pruning does not support layer up (Conv2DTranspose)"
    with pytest.raises(TrialPruned, match=re.escape(msg)):
        magnitude.prune_channels(seq, None, None, 0.5, finetune_epochs=0)

    inp = keras.Input((8, 8, 1))
    a = layers.Conv2D(4, 3, padding="same", name="a")(inp)
    b = layers.Conv2D(4, 3, padding="same", name="b")(inp)
    x = layers.Add(name="sum")([a, b])
    out = layers.Dense(10)(layers.Flatten()(x))
    with pytest.raises(TrialPruned, match=re.escape("does not support layer sum (Add)")):
        magnitude.prune_channels(keras.Model(inp, out), None, None, 0.5, finetune_epochs=0)


def test_onnx_export_keeps_the_zeros(unstructured, digits, tmp_path):
    import onnxruntime as ort
    import tensorflow as tf
    import tf2onnx

    m = unstructured(0.8)
    spec = (tf.TensorSpec((None, 8, 8, 1), tf.float32, name="input"),)

    @tf.function(input_signature=spec)
    def serve(x):
        return m(x, training=False)

    proto, _ = tf2onnx.convert.from_function(serve, input_signature=spec, opset=17)
    path = tmp_path / "pruned.onnx"
    path.write_bytes(proto.SerializeToString())

    keras_sp, onnx_sp = magnitude.kernel_sparsity(m), magnitude.onnx_sparsity(path)
    assert abs(onnx_sp - keras_sp) <= 0.01, (keras_sp, onnx_sp)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: digits.x_eval})[0]
    np.testing.assert_allclose(got, m.predict(digits.x_eval, verbose=0), atol=1e-4)
