import gc
import json
import threading

import datasets
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from artrainer.data import DataLoader


def make_source(n):
    """`x` is the example id, so batches can be checked for coverage and order."""
    return {"x": np.arange(n), "feat": np.arange(2 * n, dtype=np.float32).reshape(n, 2)}


def take(loader, num_batches):
    """The next `num_batches` batches, crossing epochs, abandoning the last iterator mid-epoch."""
    out = []
    while len(out) < num_batches:
        for batch in loader:
            out.append(batch)
            if len(out) == num_batches:
                break
    return out


def epoch_ids(loader):
    """Real example ids of the next epoch, in order."""
    ids = []
    for batch in loader:
        real = batch["example_mask"] == 1.0 if "example_mask" in batch else slice(None)
        ids.extend(batch["x"][real].tolist())
    return ids


def assert_same_batches(actual, expected):
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected):
        assert got.keys() == want.keys()
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


def prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "artrainer-data-prefetch"]


@pytest.fixture(autouse=True)
def no_leaked_threads():
    yield
    gc.collect()
    assert prefetch_threads() == []


@pytest.mark.parametrize("prefetch", [0, 2])
def test_drop_gives_fixed_shapes_and_drops_remainder(prefetch):
    loader = DataLoader(make_source(10), 4, shuffle=False, last_batch="drop", prefetch=prefetch)
    batches = list(loader)
    assert len(loader) == len(batches) == 2
    for batch in batches:
        assert set(batch) == {"x", "feat"}
        assert batch["x"].shape == (4,) and batch["feat"].shape == (4, 2)
        assert isinstance(batch["x"], np.ndarray)
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in batches]), np.arange(8))


@pytest.mark.parametrize("prefetch", [0, 2])
def test_pad_repeats_first_row_and_masks_it(prefetch):
    loader = DataLoader(make_source(10), 4, shuffle=False, last_batch="pad", prefetch=prefetch)
    batches = list(loader)
    assert len(loader) == len(batches) == 3
    for batch in batches:
        assert batch["x"].shape == (4,) and batch["feat"].shape == (4, 2)
        assert batch["example_mask"].dtype == np.float32 and batch["example_mask"].shape == (4,)
    np.testing.assert_array_equal(batches[0]["example_mask"], [1, 1, 1, 1])
    np.testing.assert_array_equal(batches[-1]["x"], [8, 9, 8, 8])
    np.testing.assert_array_equal(batches[-1]["example_mask"], [1, 1, 0, 0])


def test_pad_adds_mask_even_without_remainder():
    """The batch pytree must not depend on whether this dataset happens to divide evenly."""
    loader = DataLoader(make_source(8), 4, last_batch="pad")
    for _ in range(2):
        for batch in loader:
            np.testing.assert_array_equal(batch["example_mask"], np.ones(4, np.float32))


@pytest.mark.parametrize("last_batch", ["drop", "pad"])
def test_every_example_once_per_epoch(last_batch):
    loader = DataLoader(make_source(23), 5, last_batch=last_batch, seed=3)
    for _ in range(3):
        ids = epoch_ids(loader)
        assert len(ids) == len(set(ids))
        assert len(ids) == (23 if last_batch == "pad" else 20)
        assert set(ids) <= set(range(23))


def test_shuffle_differs_between_epochs_and_is_reproducible():
    first, second = DataLoader(make_source(100), 10, seed=7), DataLoader(make_source(100), 10, seed=7)
    epochs = [epoch_ids(first) for _ in range(2)]
    assert epochs[0] != epochs[1]
    assert [epoch_ids(second) for _ in range(2)] == epochs
    assert epoch_ids(DataLoader(make_source(100), 10, seed=8)) != epochs[0]


def test_no_shuffle_is_natural_order_every_epoch():
    loader = DataLoader(make_source(12), 4, shuffle=False)
    assert epoch_ids(loader) == epoch_ids(loader) == list(range(12))


def test_len_num_examples_and_position():
    loader = DataLoader(make_source(10), 3, last_batch="pad", prefetch=4)
    assert (len(loader), loader.num_examples) == (4, 10)
    assert loader.state_dict() == {"epoch": 0, "batches_yielded": 0, "seed": 0}
    take(loader, 1)
    # Only batches handed over count, not those the worker assembled ahead.
    assert loader.state_dict() == {"epoch": 0, "batches_yielded": 1, "seed": 0}
    take(loader, 3)
    assert loader.state_dict() == {"epoch": 1, "batches_yielded": 0, "seed": 0}
    assert json.loads(json.dumps(loader.state_dict())) == loader.state_dict()


def test_for_loop_is_one_epoch():
    loader = DataLoader(make_source(10), 3)
    take(loader, 2)
    assert len(list(loader)) == 1  # the rest of epoch 0
    assert len(list(loader)) == 3  # all of epoch 1


@pytest.mark.parametrize("prefetch", [0, 1, 3])
@pytest.mark.parametrize("last_batch", ["drop", "pad"])
def test_resume_mid_epoch_matches_uninterrupted(prefetch, last_batch):
    kwargs = dict(batch_size=4, seed=11, last_batch=last_batch, prefetch=prefetch)
    reference = take(DataLoader(make_source(18), **kwargs), 12)

    original = DataLoader(make_source(18), **kwargs)
    head = take(original, 6)
    state = json.loads(json.dumps(original.state_dict()))
    resumed = DataLoader(make_source(18), **kwargs)
    resumed.load_state_dict(state)
    tail = take(resumed, 6)

    assert_same_batches(head + tail, reference)
    assert_same_batches(take(original, 6), tail)


def test_hf_dataset_source_matches_arrays_and_selects_columns():
    arrays = make_source(10)
    table = datasets.Dataset.from_dict({**arrays, "text": [f"row {i}" for i in range(10)]})
    kwargs = dict(batch_size=4, seed=5, last_batch="pad")
    from_hf = take(DataLoader(table, columns=["x", "feat"], **kwargs), 6)
    assert_same_batches(from_hf, take(DataLoader(arrays, **kwargs), 6))
    assert from_hf[0]["feat"].dtype == np.float32

    everything = next(iter(DataLoader(table, 4, shuffle=False)))
    assert set(everything) == {"x", "feat", "text"}
    assert everything["text"].tolist() == ["row 0", "row 1", "row 2", "row 3"]


def test_dict_source_accepts_array_likes_and_selects_columns():
    source = {"x": list(range(6)), "y": [[i, i] for i in range(6)]}
    batch = next(iter(DataLoader(source, 3, shuffle=False, columns=["y"])))
    assert set(batch) == {"y"}
    np.testing.assert_array_equal(batch["y"], [[0, 0], [1, 1], [2, 2]])


@pytest.mark.parametrize(
    "source, kwargs, error, match",
    [
        ({}, {}, ValueError, "source is empty"),
        ({"x": np.arange(0)}, {}, ValueError, "source is empty: it has 0"),
        ({"x": np.arange(4), "y": np.arange(5)}, {}, ValueError, r"same length.*'x': 4, 'y': 5"),
        ({"x": np.float32(1.0)}, {}, ValueError, r"columns \['x'\] are scalars"),
        ([np.arange(4)], {}, TypeError, "source must be a dict .* got list"),
        (make_source(4), {"batch_size": 0}, ValueError, r"batch_size must be an int >= 1; got 0 \(int\)"),
        (make_source(4), {"batch_size": 2.0}, TypeError, r"batch_size must be an int >= 1; got 2.0 \(float\)"),
        (make_source(4), {"batch_size": True}, TypeError, "batch_size .* got True"),
        (make_source(4), {"batch_size": 5}, ValueError, "batch_size=5 exceeds num_examples=4 .*'drop'"),
        (make_source(4), {"last_batch": "keep"}, ValueError, r"last_batch must be one of 'drop', 'pad'; got 'keep' \(str\)"),
        (make_source(4), {"prefetch": -1}, ValueError, r"prefetch must be an int >= 0; got -1 \(int\)"),
        (make_source(4), {"seed": -1}, ValueError, r"seed must be an int >= 0; got -1 \(int\)"),
        (make_source(4), {"columns": ["x", "nope"]}, ValueError, r"columns .* \['nope'\]; available .*'feat'"),
        (make_source(4), {"columns": "x"}, TypeError, "columns must be a sequence of column names, not .*'x'"),
        (make_source(4), {"columns": []}, ValueError, "columns must name at least one column"),
        ({"example_mask": np.ones(4)}, {"last_batch": "pad"}, ValueError, "columns contain 'example_mask'"),
    ],
)
def test_bad_arguments_raise_at_construction(source, kwargs, error, match):
    with pytest.raises(error, match=match):
        DataLoader(source, **{"batch_size": 2, **kwargs})


def test_hf_unknown_column_and_empty_dataset_raise():
    with pytest.raises(ValueError, match=r"columns has unknown names \['y'\]; available columns are \['x'\]"):
        DataLoader(datasets.Dataset.from_dict({"x": [1, 2]}), 1, columns=["y"])
    with pytest.raises(ValueError, match="source is empty"):
        DataLoader(datasets.Dataset.from_dict({"x": []}), 1)


def test_pad_allows_batch_larger_than_dataset():
    (batch,) = list(DataLoader(make_source(3), 5, shuffle=False, last_batch="pad"))
    np.testing.assert_array_equal(batch["x"], [0, 1, 2, 0, 0])
    np.testing.assert_array_equal(batch["example_mask"], [1, 1, 1, 0, 0])


@pytest.mark.parametrize(
    "state, error, match",
    [
        ([0, 0, 0], TypeError, "state must be a mapping"),
        ({"epoch": 0, "batches_yielded": 0}, ValueError, r"state is missing keys \['seed'\]"),
        ({"epoch": -1, "batches_yielded": 0, "seed": 0}, ValueError, r"state\['epoch'\] must be an int >= 0; got -1 \(int\)"),
        ({"epoch": 0, "batches_yielded": "1", "seed": 0}, TypeError, r"state\['batches_yielded'\] must be an int >= 0; got '1' \(str\)"),
        ({"epoch": 0, "batches_yielded": 0, "seed": 1}, ValueError, r"state\['seed'\]=1 does not match .*seed=0"),
        ({"epoch": 0, "batches_yielded": 5, "seed": 0}, ValueError, r"state\['batches_yielded'\]=5 must be < 5"),
    ],
)
def test_bad_state_raises(state, error, match):
    loader = DataLoader(make_source(10), 2)
    with pytest.raises(error, match=match):
        loader.load_state_dict(state)
    assert loader.state_dict() == {"epoch": 0, "batches_yielded": 0, "seed": 0}


def test_abandoned_iterators_stop_their_thread():
    loader = DataLoader(make_source(64), 2, prefetch=2)

    iterator = iter(loader)
    next(iterator)
    assert len(prefetch_threads()) == 1
    iterator.close()
    assert prefetch_threads() == []

    for _ in loader:
        break
    assert prefetch_threads() == []

    next(iter(loader))  # the iterator is garbage the moment this line ends
    gc.collect()
    assert prefetch_threads() == []
    assert loader.state_dict()["batches_yielded"] == 3


@pytest.mark.parametrize("prefetch", [0, 2])
def test_worker_exception_reaches_consumer(prefetch, monkeypatch):
    loader = DataLoader(make_source(10), 2, prefetch=prefetch)
    gather = loader._gather
    calls = []

    def flaky_gather(indices):
        """Stands in for a failing read, e.g. a corrupt Arrow file behind a Dataset."""
        calls.append(indices)
        if len(calls) == 3:
            raise OSError("disk on fire")
        return gather(indices)

    monkeypatch.setattr(loader, "_gather", flaky_gather)
    received = []
    with pytest.raises(OSError, match="disk on fire"):
        for batch in loader:
            received.append(batch)
    assert len(received) == 2
    assert loader.state_dict()["batches_yielded"] == 2


@settings(max_examples=50, deadline=None)
@given(
    num_examples=st.integers(1, 40),
    batch_size=st.integers(1, 12),
    last_batch=st.sampled_from(["drop", "pad"]),
    shuffle=st.booleans(),
    seed=st.integers(0, 2**32),
    prefetch=st.integers(0, 3),
    data=st.data(),
)
def test_property_coverage_and_resume(num_examples, batch_size, last_batch, shuffle, seed, prefetch, data):
    if last_batch == "drop":
        batch_size = min(batch_size, num_examples)
    kwargs = dict(batch_size=batch_size, last_batch=last_batch, shuffle=shuffle, seed=seed, prefetch=prefetch)
    loader = DataLoader(make_source(num_examples), **kwargs)
    expected_ids = num_examples if last_batch == "pad" else len(loader) * batch_size
    for _ in range(2):
        ids = epoch_ids(loader)
        assert len(ids) == len(set(ids)) == expected_ids
        assert set(ids) <= set(range(num_examples))

    total = 2 * len(loader)
    stop = data.draw(st.integers(0, total), label="stop")
    reference = take(DataLoader(make_source(num_examples), **kwargs), total)
    original = DataLoader(make_source(num_examples), **kwargs)
    head = take(original, stop)
    resumed = DataLoader(make_source(num_examples), **kwargs)
    resumed.load_state_dict(original.state_dict())
    assert_same_batches(head + take(resumed, total - stop), reference)
