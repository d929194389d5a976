"""LEAF's Shakespeare task from a plain text and the GEMM-form character LSTM."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import edgejax as ej
from edgejax.data import text as shakespeare
from edgejax.models.recurrent import char_lstm, leaf_char_lstm, lstm, lstm_init

REAL = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "tinyshakespeare.txt")
REAL = REAL if os.path.isfile(REAL) else "/work/shared/data/tinyshakespeare.txt"

PLAY = """HAMLET:
To be, or not to be, that is the question:
Whether 'tis nobler in the mind to suffer
The slings and arrows of outrageous fortune,

OPHELIA:
Good my lord,
How does your honour for this many a day?
My lord, I have remembrances of yours,
That I have longed long to re-deliver.

HAMLET:
I humbly thank you; well, well, well.

Or to take arms against a sea of troubles,
And by opposing end them.

First Player:

POLONIUS:
Though this be madness, yet there is method in't. Will you walk out of the air, my lord? $

GHOST:
Mark me.
"""


def _play(tmp_path):
    path = tmp_path / "play.txt"
    path.write_text(PLAY)
    return path


def test_vocabulary_is_leafs_80_characters():
    assert len(shakespeare.LEAF_VOCAB) == 80 and len(set(shakespeare.LEAF_VOCAB)) == 80
    codes = shakespeare.encode("To be, or not to be$")
    assert shakespeare.decode(codes) == "To be, or not to be "          # '$' is outside: a space
    assert codes[0] == shakespeare.LEAF_VOCAB.index("T")


def _expected_windows(speech, windows="lines"):
    """Every 81-character sample (window + label) of one role, written independently of the loader."""
    if windows == "joined":
        text = " ".join(speech.split("\n"))
        while "  " in text:
            text = text.replace("  ", " ")
        text = text.replace("$", " ")
        return [text[j:j + 81] for j in range(len(text) - 80)]
    out = []
    for line in speech.split("\n"):
        while "  " in line:
            line = line.replace("  ", " ")
        padded = " " * 80 + line.replace("$", " ") + "\n"
        out += [padded[j:j + 81] for j in range(len(padded) - 80)]
    return out


def _samples(data, gid, split="train"):
    x, y, g = (getattr(data, f"{k}_{split}") for k in ("x", "y", "groups"))
    return [shakespeare.decode(r) + shakespeare.LEAF_VOCAB[l] for r, l in zip(x[g == gid].astype(int), y[g == gid])]


def test_roles_windows_and_leaf_split_on_a_generated_play(tmp_path):
    roles = shakespeare.parse_roles(PLAY)
    assert sorted(roles) == ["FIRST PLAYER", "GHOST", "HAMLET", "OPHELIA", "POLONIUS"][1:]   # 'First Player' is empty
    assert roles["HAMLET"].endswith("And by opposing end them.")            # a block without a header continues
    data, names = ej.data.load_shakespeare(_play(tmp_path), train_fraction=0.8, seed=0, return_roles=True)
    assert names == ["HAMLET", "OPHELIA"]                                   # POLONIUS and GHOST have 1 line (<= 2)
    assert data.num_classes == 80 and data.feature_shape == (80,)
    for gid, name in enumerate(names):
        expected = _expected_windows(roles[name])
        n = len(expected)
        assert len(_samples(data, gid)) == (1 if n == 2 else max(1, int(0.8 * n)))
        assert sorted(_samples(data, gid) + _samples(data, gid, "test")) == sorted(expected)
    assert _expected_windows(roles["HAMLET"])[0] == " " * 80 + "T"          # LEAF pads every line with 80 spaces
    fed, _ = ej.federate(data, None, ej.data.Natural())
    assert fed.num_nodes == 2
    np.testing.assert_array_equal(np.asarray(fed.local_test.count), np.bincount(data.groups_test))
    n_ophelia = len(_expected_windows(roles["OPHELIA"]))
    assert len(np.unique(ej.data.load_shakespeare(_play(tmp_path), min_samples=n_ophelia).groups_train)) == 2
    assert len(np.unique(ej.data.load_shakespeare(_play(tmp_path), min_samples=n_ophelia + 1).groups_train)) == 1
    joined, names = ej.data.load_shakespeare(_play(tmp_path), windows="joined", return_roles=True)
    assert names == ["HAMLET", "OPHELIA"]
    assert sorted(_samples(joined, 0) + _samples(joined, 0, "test")) == sorted(_expected_windows(roles["HAMLET"],
                                                                                                 "joined"))


def test_contiguous_split_shares_no_text(tmp_path):
    words = np.random.default_rng(0).choice(["the", "king", "doth", "wake", "tonight", "and", "takes", "his", "rouse"],
                                            size=300)
    lines = [" ".join(words[i:i + 6]) + "," for i in range(0, 300, 6)]
    path = tmp_path / "king.txt"
    path.write_text("KING:\n" + "\n".join(lines) + "\n")
    expected = _expected_windows("\n".join(lines))
    n = len(expected)
    data = ej.data.load_shakespeare(path, split="contiguous")
    n_train = int(0.8 * n)
    assert _samples(data, 0) == expected[:n_train]
    assert _samples(data, 0, "test") == expected[n_train + 80:]           # past the last train window and label
    every3 = expected[::3]
    strided = ej.data.load_shakespeare(path, stride=3, split="contiguous")
    assert _samples(strided, 0) == every3[:int(0.8 * len(every3))]
    assert _samples(strided, 0, "test") == every3[int(0.8 * len(every3)) + 80 // 3:]
    with pytest.raises(ValueError, match="split must be"):
        ej.data.load_shakespeare(path, split="by_user")
    with pytest.raises(ValueError, match="windows must be"):
        ej.data.load_shakespeare(path, windows="words")


def _lstm_reference(p, xs):
    """Float64 NumPy LSTM (gates i, f, g, o; h0 = c0 = 0)."""
    sig = lambda z: 1 / (1 + np.exp(-z))
    wx, wh, b = (np.asarray(p[k]) for k in ("wx", "wh", "b"))
    hidden = wh.shape[0]
    h = c = np.zeros((xs.shape[0], hidden))
    out = []
    for t in range(xs.shape[1]):
        z = xs[:, t] @ wx + h @ wh + b
        i, f, g, o = (z[:, k * hidden:(k + 1) * hidden] for k in range(4))
        c = sig(f) * c + sig(i) * np.tanh(g)
        h = sig(o) * np.tanh(c)
        out.append(h)
    return np.stack(out, axis=1)


def test_lstm_matches_a_numpy_reference_and_the_char_model_vmaps(x64):
    p = jax.jit(lstm_init, static_argnums=(1, 2))(jax.random.PRNGKey(0), 4, 3)
    np.testing.assert_array_equal(np.asarray(p["b"]), [0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    p = {**p, "b": jax.random.normal(jax.random.PRNGKey(1), (12,))}
    xs = np.random.default_rng(0).normal(size=(2, 6, 4))
    np.testing.assert_allclose(jax.jit(lstm)(p, jnp.asarray(xs)), _lstm_reference(p, xs), rtol=1e-12, atol=1e-12)
    model = char_lstm((6,), 80, embed_dim=4, hidden=(3, 5))
    params = jax.jit(model.init)(jax.random.PRNGKey(2))
    x = jnp.asarray(np.random.default_rng(1).integers(0, 80, (2, 6)), jnp.float64)
    a = np.asarray(params["embed"]["w"])[np.asarray(x, int)]
    h = _lstm_reference(params["lstm_1"], _lstm_reference(params["lstm_0"], a))[:, -1]
    expected = h @ np.asarray(params["out"]["w"]) + np.asarray(params["out"]["b"])
    np.testing.assert_allclose(jax.jit(model.apply)(params, x), expected, rtol=1e-12, atol=1e-12)
    stacked = jax.eval_shape(jax.vmap(model.init), jax.random.split(jax.random.PRNGKey(3), 3))
    assert jax.eval_shape(jax.vmap(model.apply, in_axes=(0, None)), stacked, x).shape == (3, 2, 80)
    leaf = leaf_char_lstm()
    shapes = jax.eval_shape(leaf.init, jax.random.PRNGKey(0))
    assert shapes["lstm_1"]["wh"].shape == (256, 1024) and shapes["embed"]["w"].shape == (80, 8)


def test_fedavg_on_the_generated_play_lowers_the_loss(tmp_path):
    data = ej.data.load_shakespeare(_play(tmp_path))
    fed, _ = ej.federate(data, None, ej.data.Natural())
    model = char_lstm((80,), 80, embed_dim=8, hidden=(16,))
    with pytest.warns(UserWarning, match="no training sample of"):     # a tiny play uses few of the 80 characters
        sim = ej.Simulation(model, fed, ej.FedAvg(), ej.LocalTraining(batch_size=16, epochs=1, optimizer="adam"))
    hp = sim.hparams({"client_lr": 0.02})
    state = sim.init(jax.random.PRNGKey(0), hp)
    evaluate = jax.jit(sim.evaluate)
    before = float(evaluate(state, fed)["test_loss"])
    state, metrics = jax.jit(sim.run_rounds, static_argnums=3)(state, fed, hp, 5)
    assert float(evaluate(state, fed)["test_loss"]) < before
    assert float(metrics["train_loss"][-1]) < float(metrics["train_loss"][0])


@pytest.mark.skipif(not os.path.isfile(REAL), reason=f"tinyshakespeare.txt not found at {REAL} (offline data folder)")
def test_real_tinyshakespeare():
    data, roles = ej.data.load_shakespeare(REAL, stride=80, return_roles=True)
    assert 150 < len(roles) < 320 and "ROMEO" in roles and "JULIET" in roles
    speech = shakespeare.parse_roles(open(REAL).read())["ROMEO"]
    romeo = roles.index("ROMEO")
    assert sorted(_samples(data, romeo) + _samples(data, romeo, "test")) == sorted(_expected_windows(speech)[::80])
    assert np.array_equal(np.unique(data.groups_train), np.arange(len(roles)))
