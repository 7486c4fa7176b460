"""Tokenizers, preprocessing and text data sets (artrainer.data.text)."""

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from artrainer.data import DataLoader
from artrainer.data.text import (BPE_SPECIAL_TOKENS, BPETokenizer, ByteTokenizer, CharTokenizer, Tokenizer,
                                 load_text_dataset, preprocess, read_text_files, stdlib_corpus, token_windows)

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare" / "input.txt"
UNICODE = "naïve café — 日本語 🤖 Ωmega\n\ttabs,  double  spaces, <eos> <pad> typed in, \x00 and \u200b."


@pytest.fixture(scope="module")
def shakespeare() -> str:
    if not SHAKESPEARE.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{SHAKESPEARE} is missing; CI must provide it")
        pytest.skip(f"{SHAKESPEARE} is absent (outside CI the shared data is optional)")
    return SHAKESPEARE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return stdlib_corpus(120_000).splitlines()


@pytest.fixture(scope="module")
def bpe(corpus) -> BPETokenizer:
    return BPETokenizer.train(corpus[:2000], 512)


@pytest.fixture(scope="module")
def tokenizers(bpe) -> dict[str, Tokenizer]:
    return {"byte": ByteTokenizer(), "char": CharTokenizer.fit(UNICODE + "abcdefghijklmnopqrstuvwxyz"), "bpe": bpe}


@pytest.mark.parametrize("kind", ["byte", "char", "bpe"])
def test_tokenizers_follow_the_protocol(tokenizers, kind):
    tokenizer = tokenizers[kind]
    specials = [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id]
    assert isinstance(tokenizer, Tokenizer)
    assert len(set(specials)) == 3 and all(0 <= i < tokenizer.vocab_size for i in specials)
    ids = tokenizer.encode(UNICODE)
    assert ids and not set(ids) & set(specials)  # typed "<eos>" is text, not the EOS id
    assert all(0 <= i < tokenizer.vocab_size for i in ids)
    assert tokenizer.decode(ids) == UNICODE
    assert tokenizer.decode([tokenizer.bos_token_id, *ids, tokenizer.eos_token_id, tokenizer.pad_token_id]) == UNICODE
    assert tokenizer.decode(np.asarray(ids)) == UNICODE  # arrays decode like lists


@settings(max_examples=60, deadline=None)
@given(text=st.text())
def test_byte_and_bpe_round_trip_any_unicode(bpe, text):
    assert ByteTokenizer().decode(ByteTokenizer().encode(text)) == text
    assert bpe.decode(bpe.encode(text)) == text


@pytest.mark.parametrize("kind", ["byte", "char", "bpe"])
def test_save_load_round_trip(tokenizers, kind, tmp_path):
    tokenizer = tokenizers[kind]
    tokenizer.save(tmp_path / "tokenizer.json")
    loaded = type(tokenizer).load(tmp_path / "tokenizer.json")
    assert loaded == tokenizer
    assert (loaded.vocab_size, loaded.bos_token_id, loaded.eos_token_id, loaded.pad_token_id) == (
        tokenizer.vocab_size, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert loaded.encode(UNICODE) == tokenizer.encode(UNICODE)
    json.loads((tmp_path / "tokenizer.json").read_text())  # plain JSON on disk


class _Exploit:
    """Unpickling this would create `marker`: proof that load never unpickles."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


@pytest.mark.parametrize("cls", [ByteTokenizer, CharTokenizer, BPETokenizer])
@pytest.mark.parametrize("content", [
    "pickle", "not json", "[1, 2]", '{"type": "SomethingElse"}', '{"type": "CharTokenizer", "chars": "ba"}',
    '{"type": "CharTokenizer"}', '{"model": {"type": "WordPiece", "vocab": {}}}',
])
def test_load_rejects_unexpected_files_without_unpickling(cls, content, tmp_path):
    path, marker = tmp_path / "tokenizer.json", tmp_path / "exploited"
    if content == "pickle":
        path.write_bytes(pickle.dumps(_Exploit(marker)))
    else:
        path.write_text(content)
    with pytest.raises(ValueError, match="tokenizer.json"):
        cls.load(path)
    assert not marker.exists()


def test_bpe_load_rejects_a_tokenizer_it_cannot_round_trip(tmp_path):
    from tokenizers import Tokenizer as HFTokenizer, models, pre_tokenizers
    wordpiece = HFTokenizer(models.WordPiece({"[UNK]": 0, **{t: i + 1 for i, t in enumerate(BPE_SPECIAL_TOKENS)}},
                                             unk_token="[UNK]"))
    wordpiece.pre_tokenizer = pre_tokenizers.Whitespace()
    wordpiece.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match="WordPiece"):
        BPETokenizer.load(tmp_path / "tokenizer.json")


def test_char_tokenizer_on_tiny_shakespeare(shakespeare):
    tokenizer = CharTokenizer.fit(shakespeare)
    assert len(tokenizer.chars) == 65 and tokenizer.vocab_size == 68
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (65, 66, 67)
    ids = tokenizer.encode(shakespeare)
    assert max(ids) == 64 and tokenizer.decode(ids) == shakespeare
    assert tokenizer.encode("\n !") == [0, 1, 2]  # sorted characters: newline, space, '!'


def test_char_tokenizer_names_the_unknown_character():
    tokenizer = CharTokenizer.fit("abc")
    with pytest.raises(ValueError, match="'z'.*index 2"):
        tokenizer.encode("abzy")
    with pytest.raises(ValueError, match="text is empty"):
        CharTokenizer.fit("")


def test_bpe_compresses_held_out_text(bpe, corpus):
    held_out = "\n".join(corpus[-500:])
    assert bpe.vocab_size <= 512 and len(bpe.encode(held_out)) < 0.75 * len(held_out.encode("utf-8"))
    assert [bpe.bos_token_id, bpe.eos_token_id, bpe.pad_token_id] == [0, 1, 2]


def test_bpe_train_validates_its_arguments():
    with pytest.raises(ValueError, match="vocab_size"):
        BPETokenizer.train(["some text"], 258)
    with pytest.raises(ValueError, match="min_frequency"):
        BPETokenizer.train(["some text"], 300, min_frequency=0)
    with pytest.raises(ValueError, match="texts is empty"):
        BPETokenizer.train(iter([]), 300)
    with pytest.raises(TypeError, match="texts"):
        BPETokenizer.train("one string", 300)


def test_preprocess_pads_truncates_and_masks():
    tokenizer = CharTokenizer.fit("abcdef")  # a..f = 0..5, BOS 6, EOS 7, PAD 8
    batch = preprocess(["ab", "abcd", "abcdef", ""], tokenizer, 6)
    np.testing.assert_array_equal(batch["sequences"], [
        [6, 0, 1, 7, 8, 8],
        [6, 0, 1, 2, 3, 7],  # exactly fits: keeps its EOS
        [6, 0, 1, 2, 3, 4],  # truncated: loses EOS, as in the guide
        [6, 7, 8, 8, 8, 8],
    ])
    np.testing.assert_array_equal(batch["mask"].sum(axis=1), [4, 6, 6, 2])
    assert batch["sequences"].dtype == np.int32 and batch["mask"].dtype == np.int32
    assert np.all((batch["mask"] == 0) == (batch["sequences"] == tokenizer.pad_token_id))


def test_preprocess_feeds_the_data_loader():
    tokenizer = ByteTokenizer()
    data = preprocess([UNICODE, "short", "x" * 100], tokenizer, 16)
    (batch,) = DataLoader(data, batch_size=3, shuffle=False, prefetch=0)
    assert batch["sequences"].shape == batch["mask"].shape == (3, 16)
    assert tokenizer.decode(batch["sequences"][1]) == "short"


def test_preprocess_validates_its_arguments():
    tokenizer = ByteTokenizer()
    with pytest.raises(ValueError, match="max_length"):
        preprocess(["abc"], tokenizer, 1)
    with pytest.raises(ValueError, match="texts is empty"):
        preprocess([], tokenizer, 8)
    with pytest.raises(TypeError, match="texts"):
        preprocess("abc", tokenizer, 8)


@pytest.fixture
def datasets_cache(tmp_path, monkeypatch):
    """Keeps the `text` builder's cache out of the home directory."""
    import datasets
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def test_load_text_dataset_from_txt_files(tmp_path, datasets_cache):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text("first line\n\nthird — ü\n", encoding="utf-8")
    (tmp_path / "corpus" / "b.txt").write_text("b line\n", encoding="utf-8")
    assert load_text_dataset(tmp_path / "corpus" / "a.txt") == ["first line", "", "third — ü"]
    assert load_text_dataset(str(tmp_path / "corpus")) == ["first line", "", "third — ü", "b line"]
    with pytest.raises(ValueError, match="no .txt files"):
        (tmp_path / "empty").mkdir()
        load_text_dataset(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_text_dataset(tmp_path / "missing.txt")


def test_load_text_dataset_from_a_saved_dataset(tmp_path):
    import datasets
    train = datasets.Dataset.from_dict({"text": ["to be", "or not"], "label": [0, 1]})
    train.save_to_disk(tmp_path / "single")
    datasets.DatasetDict({"train": train, "validation": train.select([1])}).save_to_disk(tmp_path / "dict")
    assert load_text_dataset(tmp_path / "single") == ["to be", "or not"]
    assert load_text_dataset(tmp_path / "dict", split="validation") == ["or not"]
    with pytest.raises(ValueError, match="'test'.*\\['train', 'validation'\\]"):
        load_text_dataset(tmp_path / "dict", split="test")
    with pytest.raises(ValueError, match="column 'content'.*single"):
        load_text_dataset(tmp_path / "single", column="content")
    with pytest.raises(ValueError, match="column 'label'.*only strings"):
        load_text_dataset(tmp_path / "single", column="label")


def test_token_windows_and_read_text_files_still_work(tmp_path):
    tokenizer = ByteTokenizer()
    windows = token_windows(tokenizer.encode("abcdefg"), 4, bos_token_id=tokenizer.bos_token_id)
    np.testing.assert_array_equal(windows, [[256, 97, 98, 99], [256, 100, 101, 102]])
    (tmp_path / "a.txt").write_text("hello")
    assert read_text_files([tmp_path / "a.txt"]) == "hello"
