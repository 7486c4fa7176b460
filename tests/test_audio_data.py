"""Audio data: mu-law, checks, resampling, WAV files, windows, FSDD and wav folders (artrainer.data.audio)."""

import math
import os
import re
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile
from hypothesis import given
from hypothesis import strategies as st

from artrainer.data import DataLoader
from artrainer.data.audio import (QUANTIZATION_CHANNELS, check_audio, fit_length, frame_windows, load_fsdd,
                                  load_wav_folder, mu_law_decode, mu_law_encode, read_wav, resample,
                                  split_by_speaker, to_mono, write_wav)

FSDD = Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd"
# Speakers of the Free Spoken Digit Dataset, 50 recordings of each digit each: facts of the data.
FSDD_SPEAKERS = ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]
STEP = 1 / 32768  # one 16-bit PCM step


@pytest.fixture(scope="module")
def fsdd_root() -> Path:
    if not (FSDD / "recordings").is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{FSDD} is missing; CI must provide it")
        pytest.skip(f"{FSDD} is absent (outside CI the shared data is optional)")
    return FSDD


@pytest.fixture(scope="module")
def fsdd(fsdd_root) -> dict[str, np.ndarray]:
    return load_fsdd(fsdd_root)


def write_pcm16(path: Path, samples: np.ndarray, rate: int) -> None:
    """A 16-bit WAV of integer samples ([T] or [T, C]), written by soundfile directly, not by write_wav."""
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, np.asarray(samples, np.int16), rate, subtype="PCM_16")


def hann_tone(times: np.ndarray, duration: float) -> np.ndarray:
    """A 440 Hz tone under a Hann window: smooth to silence at both ends, so band-limited in practice."""
    return 0.9 * np.sin(2 * np.pi * 440 * times) * np.sin(np.pi * times / duration) ** 2


# Mu-law ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [16, 256, 65536])
def test_mu_law_round_trip_is_exact_on_the_code_grid(channels):
    codes = np.arange(channels)
    audio = mu_law_decode(codes, channels)
    assert audio.dtype == np.float32 and audio[0] == -1 and audio[-1] == 1
    assert np.all(np.diff(audio) > 0)
    encoded = mu_law_encode(audio, channels)
    assert encoded.dtype == np.int32
    np.testing.assert_array_equal(encoded, codes)


def test_mu_law_encode_matches_the_formula_at_known_points():
    audio = np.array([-1.0, -0.5, 0.0, 1e-3, 0.5, 1.0])
    mu = QUANTIZATION_CHANNELS - 1
    expected = [math.floor((math.copysign(math.log(1 + mu * abs(x)), x) / math.log(1 + mu) + 1) / 2 * mu + 0.5)
                for x in audio]
    assert expected[:3] == [0, 16, 128] and expected[-1] == 255  # silence's 127.5 rounds up
    assert mu_law_encode(audio).tolist() == expected
    assert mu_law_encode(np.array([-3.0, 2.0])).tolist() == [0, 255]  # beyond ±1 saturates


@pytest.mark.parametrize("channels", [16, 256])
@given(audio=st.lists(st.floats(-1, 1), min_size=1, max_size=64))
def test_mu_law_error_is_within_half_a_step(channels, audio):
    audio = np.array(audio)
    codes = mu_law_encode(audio, channels)
    decoded = mu_law_decode(codes, channels)
    grid = mu_law_decode(np.arange(channels), channels).astype(np.float64)
    gaps = np.diff(grid)
    left = np.where(codes > 0, gaps[np.maximum(codes - 1, 0)], 0)
    right = np.where(codes < channels - 1, gaps[np.minimum(codes, channels - 2)], 0)
    # An inner cell reaches at most half the larger gap to a neighbour; an end cell is one-sided.
    at_end = (codes == 0) | (codes == channels - 1)
    bound = np.where(at_end, 1.0, 0.5) * np.maximum(left, right) + 1e-7
    assert np.all(np.abs(decoded - audio) <= bound)


@pytest.mark.parametrize("channels", [256, 65536])
def test_mu_law_under_jit_matches_numpy(channels):
    encode = jax.jit(partial(mu_law_encode, quantization_channels=channels))
    decode = jax.jit(partial(mu_law_decode, quantization_channels=channels))
    codes = np.arange(channels, dtype=np.int32)
    decoded = decode(jnp.asarray(codes))
    assert isinstance(decoded, jax.Array) and decoded.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(decoded), mu_law_decode(codes, channels), rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(np.asarray(encode(decoded)), codes)

    audio = np.random.default_rng(channels).uniform(-1, 1, 4096).astype(np.float32)
    on_device = encode(jnp.asarray(audio))
    assert isinstance(on_device, jax.Array) and on_device.dtype == jnp.int32
    # float32 on the device is off by up to about channels·1e-7 before rounding, so where numpy's
    # float64 value lies that close to a half, the two may round apart; everywhere else they agree.
    mu = channels - 1
    unrounded = (np.sign(audio) * np.log1p(mu * np.abs(audio.astype(np.float64))) / np.log1p(mu) + 1) / 2 * mu
    clear_of_halves = np.abs(unrounded - np.floor(unrounded) - 0.5) > 4e-7 * channels
    assert clear_of_halves.mean() > 0.9
    np.testing.assert_array_equal(np.asarray(on_device)[clear_of_halves],
                                  mu_law_encode(audio, channels)[clear_of_halves])


@pytest.mark.parametrize("call, error, message", [
    (lambda: mu_law_encode(np.array([0, 1])), TypeError, "float samples.*dtype int64"),
    (lambda: mu_law_encode(np.array([0.0, np.nan])), ValueError, "NaN at index 1"),
    (lambda: mu_law_decode(np.array([0.5])), TypeError, r"integer mu-law codes in \[0, 255\], got dtype float64"),
    (lambda: mu_law_decode(np.array([0, 255, 256])), ValueError, r"\[0, 255\].*got 256 at index 2"),
    (lambda: mu_law_decode(np.array([16]), 16), ValueError, r"\[0, 15\] for quantization_channels=16, got 16"),
    (lambda: mu_law_encode(np.zeros(2), 1), ValueError, r"quantization_channels must be an int in \[2, 65536\]; got 1 \(int\)"),
    (lambda: mu_law_encode(np.zeros(2), 2**17), ValueError, r"quantization_channels must be an int in \[2, 65536\]; got 131072 \(int\)"),
    (lambda: mu_law_decode(np.zeros(2, int), 256.0), TypeError, "quantization_channels.*float"),
], ids=["int-audio", "nan", "float-codes", "code-too-big", "code-too-big-16", "one-channel", "too-many",
        "float-channels"])
def test_mu_law_rejects_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()


# check_audio and to_mono -------------------------------------------------------------------------


def test_check_audio_returns_float32_mono():
    audio = np.array([-1.0, 0.25, 1.0])
    checked = check_audio(audio, sample_rate=8000, expected_rate=8000)
    assert checked.dtype == np.float32 and checked.shape == (3,)
    np.testing.assert_array_equal(checked, audio)


@pytest.mark.parametrize("audio, error, message", [
    (np.zeros((100, 2)), ValueError, r"shape \(100, 2\): stereo where mono \[T\] is expected; .* to_mono\(audio\)"),
    (np.zeros((2, 100)), ValueError, r"stereo where mono \[T\] is expected; .* to_mono\(audio\.T\)"),
    (np.zeros((100, 6)), ValueError, "6-channel audio where mono"),
    (np.zeros((2, 3, 4)), ValueError, r"must be mono with shape \[T\], got shape \(2, 3, 4\)"),
    (np.zeros(0), ValueError, r"is empty \(T = 0\)"),
    (np.zeros(4, np.int16), TypeError, r"float samples in \[-1, 1\], got dtype int16 .*audio / 32768"),
    (np.array(["a"]), TypeError, "got dtype <U1"),
    (np.array([0, np.nan, 0, 0, np.inf, np.nan]), ValueError,
     "holds 3 non-finite samples .*the first is nan at index 1"),
    (np.array([0, 0.5, -1.25, 1.1]), ValueError, r"must hold samples in \[-1, 1\], got -1.25 at index 2"),
], ids=["stereo-last", "stereo-first", "six-channels", "rank-3", "empty", "int16", "strings", "non-finite",
        "out-of-range"])
def test_check_audio_rejects_bad_audio(audio, error, message):
    with pytest.raises(error, match=message):
        check_audio(audio)
    with pytest.raises(error, match="^clip "):
        check_audio(audio, name="clip")


def test_check_audio_rejects_a_mismatched_sample_rate():
    with pytest.raises(ValueError,
                       match=r"sample rate 16000 Hz but 8000 Hz is expected.*resample\(audio, 16000, 8000\)"):
        check_audio(np.zeros(4), sample_rate=16000, expected_rate=8000)
    with pytest.raises(ValueError, match=r"expected_rate must be an int >= 1; got 0 \(int\)"):
        check_audio(np.zeros(4), expected_rate=0)


def test_to_mono_averages_channels():
    stereo = np.array([[1.0, 0.0], [-0.5, -0.25], [0.5, 0.5]])
    np.testing.assert_array_equal(to_mono(stereo), [0.5, -0.375, 0.5])
    assert to_mono(stereo).dtype == np.float32
    np.testing.assert_array_equal(to_mono(np.array([0.5, -0.5])), [0.5, -0.5])
    with pytest.raises(ValueError, match=r"\[T, C\].*got shape \(2, 2, 2\)"):
        to_mono(np.zeros((2, 2, 2)))
    with pytest.raises(TypeError, match="dtype int16"):
        to_mono(np.zeros((2, 2), np.int16))


# Resampling --------------------------------------------------------------------------------------


@pytest.mark.parametrize("orig_rate, new_rate", [(16000, 8000), (8000, 16000), (44100, 16000), (16000, 22050)])
def test_resample_matches_an_analytic_tone_everywhere(orig_rate, new_rate):
    duration = 0.5
    source = hann_tone(np.arange(int(orig_rate * duration)) / orig_rate, duration).astype(np.float32)
    resampled = resample(source, orig_rate, new_rate)
    assert resampled.dtype == np.float32 and len(resampled) == int(new_rate * duration)
    expected = hann_tone(np.arange(len(resampled)) / new_rate, duration)
    np.testing.assert_allclose(resampled, expected, atol=1e-6)


@pytest.mark.parametrize("orig_rate, new_rate", [(16000, 8000), (8000, 16000)])
def test_resample_matches_a_cut_sine_away_from_the_edges(orig_rate, new_rate):
    def sine(times):
        return 0.9 * np.cos(2 * np.pi * 440 * times + 0.3)  # starts and stops mid-swing: a jump to silence

    source = sine(np.arange(orig_rate // 2 + 37) / orig_rate).astype(np.float32)
    resampled = resample(source, orig_rate, new_rate)
    error = np.abs(resampled - sine(np.arange(len(resampled)) / new_rate))
    margin = new_rate // 20  # 50 ms, where the ringing from the jumps has died down
    assert error[margin:-margin].max() < 1e-3
    assert error[:margin].max() > 1e-2  # the jump does ring: the comparison above is not vacuous


@pytest.mark.parametrize("length", [1000, 1001])
@pytest.mark.parametrize("factor", [2, 3])
def test_upsampling_passes_through_the_original_samples(length, factor):
    noise = np.random.default_rng(length).uniform(-0.5, 0.5, length).astype(np.float32)  # energy up to Nyquist
    upsampled = resample(noise, 8000, 8000 * factor)
    assert len(upsampled) == factor * length
    np.testing.assert_allclose(upsampled[::factor], noise, atol=1e-6)
    assert np.abs(upsampled).max() < 1  # in range without clipping, so clipping cannot hide an error


@pytest.mark.parametrize("length, orig_rate, new_rate, expected", [
    (8000, 16000, 8000, 4000), (8037, 16000, 8000, 4019), (8035, 16000, 8000, 4018), (1000, 44100, 16000, 363),
    (3, 8000, 16000, 6), (1, 8000, 22050, 3), (5, 16000, 8000, 3),
])
def test_resample_length_rounds_half_up(length, orig_rate, new_rate, expected):
    assert len(resample(np.zeros(length), orig_rate, new_rate)) == expected


def test_resample_same_rate_and_clipping():
    audio = np.array([0.5, -0.25, 1.0])
    same = resample(audio, 8000, 8000)
    assert same.dtype == np.float32
    np.testing.assert_array_equal(same, audio)
    square = np.where(np.arange(800) % 80 < 40, 1.0, -1.0)  # full scale: band-limiting overshoots it
    upsampled = resample(square, 8000, 16000)
    assert upsampled.max() == 1.0 and upsampled.min() == -1.0
    assert np.mean(np.abs(upsampled) == 1.0) > 0.01  # really clipped, not just in range


@pytest.mark.parametrize("orig_rate, new_rate, error, message", [
    (16000, 0, ValueError, r"new_rate must be an int >= 1; got 0 \(int\)"),
    (-8000, 16000, ValueError, r"orig_rate must be an int >= 1; got -8000 \(int\)"),
    (16000.0, 8000, TypeError, r"orig_rate must be an int >= 1; got 16000.0 \(float\)"),
    (44100, 8000, ValueError, "audio of 1 samples at orig_rate=44100 Hz is shorter than one sample at new_rate=8000"),
])
def test_resample_rejects_bad_rates(orig_rate, new_rate, error, message):
    with pytest.raises(error, match=message):
        resample(np.zeros(1), orig_rate, new_rate)


# fit_length and frame_windows --------------------------------------------------------------------


def test_fit_length_trims_and_pads_with_silence():
    audio = (np.arange(6) + 1) / 10
    trimmed, mask = fit_length(audio, 4)
    np.testing.assert_allclose(trimmed, audio[:4])
    assert mask.dtype == np.int32 and mask.tolist() == [1, 1, 1, 1]
    padded, mask = fit_length(audio, 9)
    assert padded.dtype == np.float32 and padded.shape == (9,)
    np.testing.assert_allclose(padded, [*audio, 0, 0, 0])
    assert mask.tolist() == [1] * 6 + [0] * 3
    with pytest.raises(ValueError, match=r"length must be an int >= 1; got 0 \(int\)"):
        fit_length(audio, 0)


@pytest.mark.parametrize("size, length, hop, starts, real", [
    (10, 4, None, [0, 4, 8], [4, 4, 2]),
    (8, 4, None, [0, 4], [4, 4]),
    (10, 4, 3, [0, 3, 6], [4, 4, 4]),
    (11, 4, 3, [0, 3, 6, 9], [4, 4, 4, 2]),
    (3, 5, None, [0], [3]),
    (3, 5, 1, [0], [3]),
])
def test_frame_windows_cover_every_sample(size, length, hop, starts, real):
    audio = (np.arange(size) + 1) / 20  # no zeros, so padding is told apart from audio
    windows, masks = frame_windows(audio, length, hop=hop)
    assert windows.shape == masks.shape == (len(starts), length)
    assert windows.dtype == np.float32 and masks.dtype == np.int32
    for window, mask, start, count in zip(windows, masks, starts, real):
        np.testing.assert_allclose(window[:count], audio[start:start + count], rtol=1e-6)
        assert window[count:].tolist() == [0] * (length - count)
        assert mask.tolist() == [1] * count + [0] * (length - count)


def test_frame_windows_rejects_bad_hops():
    with pytest.raises(ValueError, match="hop must be at most length=4, so no sample falls between windows, got hop=5"):
        frame_windows(np.zeros(10), 4, hop=5)
    with pytest.raises(ValueError, match=r"hop must be an int >= 1; got 0 \(int\)"):
        frame_windows(np.zeros(10), 4, hop=0)


# WAV files ---------------------------------------------------------------------------------------


def test_write_then_read_keeps_audio_to_16_bits(tmp_path):
    audio = np.concatenate([[-1.0, 1.0, 0.0], np.random.default_rng(0).uniform(-1, 1, 997)])
    path = tmp_path / "new" / "folder" / "clip.wav"
    write_wav(path, audio, 8000)
    info = soundfile.info(path)
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (8000, 1, "PCM_16", 1000)
    read, rate = read_wav(path)
    assert rate == 8000 and read.dtype == np.float32 and read.shape == (1000,)
    below_full_scale = audio < 1
    # Rounded to the nearest step, after check_audio's float32 cast (its own error is below 1e-7).
    assert np.abs(read - audio)[below_full_scale].max() <= STEP / 2 + 1e-7
    assert read[1] == 1 - STEP  # 1.0 is clipped to the largest 16-bit sample
    write_wav(tmp_path / "again.wav", read, 8000)
    np.testing.assert_array_equal(read_wav(tmp_path / "again.wav")[0], read)  # on the grid: bit for bit


def test_read_wav_mixes_stereo_to_mono(tmp_path):
    left, right = np.array([1000, -2000, 32767, 0]), np.array([3000, 2000, 32767, -32768])
    write_pcm16(tmp_path / "stereo.wav", np.stack([left, right], axis=1), 8000)
    audio, rate = read_wav(tmp_path / "stereo.wav")
    assert rate == 8000 and audio.shape == (4,)
    np.testing.assert_array_equal(audio, (left + right) / 2 * STEP)


def test_read_wav_resamples_or_refuses_another_rate(tmp_path):
    duration = 0.25
    tone = hann_tone(np.arange(int(16000 * duration)) / 16000, duration)
    write_pcm16(tmp_path / "16k.wav", np.round(tone * 32768), 16000)
    native, rate = read_wav(tmp_path / "16k.wav")
    assert rate == 16000 and len(native) == 4000
    audio, rate = read_wav(tmp_path / "16k.wav", sample_rate=8000)
    assert rate == 8000 and len(audio) == 2000
    np.testing.assert_allclose(audio, hann_tone(np.arange(2000) / 8000, duration), atol=2 * STEP)
    with pytest.raises(ValueError, match="16k.wav' has sample rate 16000 Hz but sample_rate=8000 is expected"):
        read_wav(tmp_path / "16k.wav", sample_rate=8000, resample_to_rate=False)
    assert read_wav(tmp_path / "16k.wav", sample_rate=16000, resample_to_rate=False)[1] == 16000


def test_read_wav_rejects_bad_files_naming_them(tmp_path):
    with pytest.raises(ValueError, match="missing.wav' does not exist or is not a file"):
        read_wav(tmp_path / "missing.wav")
    with pytest.raises(ValueError, match=re.escape(f"{os.fspath(tmp_path)!r} does not exist or is not a file")):
        read_wav(tmp_path)
    (tmp_path / "text.wav").write_text("not audio at all")
    with pytest.raises(ValueError, match="text.wav' cannot be read as audio: .*Format not recognised"):
        read_wav(tmp_path / "text.wav")
    write_pcm16(tmp_path / "empty.wav", np.zeros(0), 8000)
    with pytest.raises(ValueError, match=r"empty.wav' holds no audio \(0 frames\)"):
        read_wav(tmp_path / "empty.wav")
    soundfile.write(tmp_path / "loud.wav", np.array([0.0, 1.5, -0.5], np.float32), 8000, subtype="FLOAT")
    with pytest.raises(ValueError, match=r"audio in .*loud.wav' must hold samples in \[-1, 1\], got 1.5 at index 1"):
        read_wav(tmp_path / "loud.wav")


def test_write_wav_checks_its_input(tmp_path):
    with pytest.raises(ValueError, match="stereo where mono"):
        write_wav(tmp_path / "x.wav", np.zeros((10, 2)), 8000)
    with pytest.raises(ValueError, match=r"got 2.0 at index 0"):
        write_wav(tmp_path / "x.wav", np.array([2.0]), 8000)
    with pytest.raises(TypeError, match="sample_rate must be an int"):
        write_wav(tmp_path / "x.wav", np.zeros(10), 8000.0)
    assert not (tmp_path / "x.wav").exists()


# FSDD --------------------------------------------------------------------------------------------


def test_fsdd_counts_labels_and_codes(fsdd):
    waveform, mask, labels, speakers = fsdd["waveform"], fsdd["mask"], fsdd["labels"], fsdd["speakers"]
    assert waveform.shape == mask.shape == (3000, 4096)
    assert waveform.dtype == mask.dtype == labels.dtype == np.int32
    assert np.bincount(labels).tolist() == [300] * 10
    names, counts = np.unique(speakers, return_counts=True)
    assert names.tolist() == FSDD_SPEAKERS and counts.tolist() == [500] * 6
    assert waveform.min() >= 0 and waveform.max() <= 255 and len(np.unique(waveform)) > 200
    file_names = [Path(path).name for path in fsdd["paths"]]
    assert len(set(file_names)) == 3000
    for name, label, speaker in zip(file_names, labels, speakers):
        digit, named_speaker, _ = name.split("_")
        assert (int(digit), named_speaker) == (label, speaker)
    keys = [(int(d), s, int(i.removesuffix(".wav"))) for d, s, i in (name.split("_") for name in file_names)]
    assert keys == sorted(keys)


def test_fsdd_rows_are_encoded_fitted_recordings(fsdd):
    mask = fsdd["mask"]
    real = mask.sum(axis=1)
    assert np.all(mask == (np.arange(4096) < real[:, None]))  # a prefix of real samples, then padding
    assert (real < 4096).any() and (real == 4096).any()  # short recordings padded, long ones trimmed
    assert np.all(fsdd["waveform"][mask == 0] == 128)  # silence
    for row in (0, 1234, 2999):
        audio, rate = read_wav(fsdd["paths"][row])
        assert rate == 8000 and real[row] == min(len(audio), 4096)
        np.testing.assert_array_equal(fsdd["waveform"][row], mu_law_encode(fit_length(audio, 4096)[0]))


def test_fsdd_filters_and_accepts_the_recordings_folder(fsdd, fsdd_root):
    subset = load_fsdd(fsdd_root / "recordings", digits=[3, 7], speakers="theo")
    assert len(subset["labels"]) == 100 and set(subset["labels"].tolist()) == {3, 7}
    assert set(subset["speakers"].tolist()) == {"theo"}
    rows = np.flatnonzero(np.isin(fsdd["labels"], [3, 7]) & (fsdd["speakers"] == "theo"))
    for key in ("waveform", "mask", "labels", "paths"):
        np.testing.assert_array_equal(subset[key], fsdd[key][rows])
    with pytest.raises(ValueError, match=r"speakers has unknown speakers \['bob'\]; the known speakers are "
                                         r"\['george', 'jackson', 'lucas', 'nicolas', 'theo', 'yweweler'\]"):
        load_fsdd(fsdd_root, speakers=["theo", "bob"])
    with pytest.raises(ValueError, match=r"digits must be a non-empty collection of ints in 0..9, got \[10\]"):
        load_fsdd(fsdd_root, digits=[10])


def test_fsdd_resamples_to_another_rate(fsdd_root):
    data = load_fsdd(fsdd_root, sample_rate=16000, length=8192, digits=[0], speakers=["lucas"])
    assert data["waveform"].shape == (50, 8192)
    first, _ = read_wav(data["paths"][0])
    assert data["mask"][0].sum() == min(2 * len(first), 8192)


def test_fsdd_split_by_speaker_holds_out_whole_speakers(fsdd):
    train, val = split_by_speaker(fsdd, ["theo", "lucas"])
    assert len(train["labels"]) == 2000 and len(val["labels"]) == 1000
    assert set(val["speakers"].tolist()) == {"theo", "lucas"}
    assert not {"theo", "lucas"} & set(train["speakers"].tolist())
    for side in (train, val):
        assert [Path(path).name.split("_")[1] for path in side["paths"]] == side["speakers"].tolist()
    batch = next(iter(DataLoader(train, batch_size=8, columns=["waveform", "mask", "labels"])))
    assert batch["waveform"].shape == (8, 4096) and batch["labels"].shape == (8,)


def test_fsdd_sorts_by_digit_speaker_and_index(tmp_path):
    recordings = tmp_path / "fsdd" / "recordings"
    for name in ["1_bob_0.wav", "1_alice_10.wav", "0_alice_0.wav", "1_alice_2.wav"]:
        write_pcm16(recordings / name, [100, -100, 200], 8000)
    (recordings / "README.txt").write_text("not a recording")
    data = load_fsdd(tmp_path / "fsdd", length=5)
    assert [Path(path).name for path in data["paths"]] == ["0_alice_0.wav", "1_alice_2.wav", "1_alice_10.wav",
                                                            "1_bob_0.wav"]
    assert data["labels"].tolist() == [0, 1, 1, 1] and data["speakers"].tolist() == ["alice"] * 3 + ["bob"]
    assert data["mask"].tolist() == [[1, 1, 1, 0, 0]] * 4
    write_pcm16(recordings / "1-bob-3.wav", [0], 8000)
    with pytest.raises(ValueError, match=r"1-bob-3.wav' is not named like an FSDD recording"):
        load_fsdd(tmp_path / "fsdd")


def test_fsdd_rejects_missing_or_empty_folders(tmp_path):
    with pytest.raises(ValueError, match="FSDD folder .*nowhere' does not exist"):
        load_fsdd(tmp_path / "nowhere")
    (tmp_path / "empty" / "recordings").mkdir(parents=True)
    with pytest.raises(ValueError, match="recordings' holds no .wav files"):
        load_fsdd(tmp_path / "empty")


# Wav folders and speaker splits ------------------------------------------------------------------


def test_wav_folder_with_class_subfolders(tmp_path):
    rng = np.random.default_rng(0)
    clips = {"dog/b.wav": rng.integers(-9000, 9000, 9), "cat/a.wav": rng.integers(-9000, 9000, 4),
             "cat/deeper/c.wav": rng.integers(-9000, 9000, 5)}
    for name, samples in clips.items():
        write_pcm16(tmp_path / "sounds" / name, samples, 8000)
    write_pcm16(tmp_path / "sounds" / "dog" / "loud.wav", np.tile([20000, -20000], 8), 16000)
    data = load_wav_folder(tmp_path / "sounds", sample_rate=8000, length=4)
    names = [str(Path(path).relative_to(tmp_path / "sounds")) for path in data["paths"]]
    assert names == ["cat/a.wav", "cat/deeper/c.wav", "cat/deeper/c.wav", "dog/b.wav", "dog/b.wav", "dog/b.wav",
                     "dog/loud.wav", "dog/loud.wav"]
    assert data["classes"].tolist() == ["cat", "dog"] and data["labels"].tolist() == [0, 0, 0, 1, 1, 1, 1, 1]
    assert data["waveform"].shape == data["mask"].shape == (8, 4)
    assert data["mask"][3:6].tolist() == [[1, 1, 1, 1], [1, 1, 1, 1], [1, 0, 0, 0]]
    windows, masks = frame_windows(clips["dog/b.wav"] * STEP, 4)
    np.testing.assert_array_equal(data["waveform"][3:6], mu_law_encode(windows))
    assert data["mask"][6:].sum() == 8  # 16 samples at 16 kHz are 8 at 8 kHz


def test_wav_folder_flat_mixed_and_missing(tmp_path):
    write_pcm16(tmp_path / "flat" / "one.WAV", np.arange(10), 8000)
    data = load_wav_folder(tmp_path / "flat", sample_rate=8000, length=4, hop=2)
    assert sorted(data) == ["mask", "paths", "waveform"] and data["waveform"].shape == (4, 4)
    write_pcm16(tmp_path / "flat" / "class" / "two.wav", np.arange(10), 8000)
    with pytest.raises(ValueError,
                       match="mixes files in class subfolders .*two.wav.* with files outside any .*one.WAV"):
        load_wav_folder(tmp_path / "flat", sample_rate=8000, length=4)
    with pytest.raises(ValueError, match="wav folder .*nowhere' does not exist"):
        load_wav_folder(tmp_path / "nowhere", sample_rate=8000, length=4)
    (tmp_path / "quiet").mkdir()
    with pytest.raises(ValueError, match="quiet' holds no .wav files"):
        load_wav_folder(tmp_path / "quiet", sample_rate=8000, length=4)


def test_split_by_speaker_keeps_rows_together():
    data = {"waveform": np.arange(12).reshape(4, 3), "speakers": np.array(["a", "b", "a", "c"], np.str_)}
    train, val = split_by_speaker(data, ["b", "c"])
    assert train["waveform"].tolist() == [[0, 1, 2], [6, 7, 8]] and train["speakers"].tolist() == ["a", "a"]
    assert val["waveform"].tolist() == [[3, 4, 5], [9, 10, 11]] and val["speakers"].tolist() == ["b", "c"]
    assert split_by_speaker(data, "a")[1]["speakers"].tolist() == ["a", "a"]
    with pytest.raises(ValueError, match=r"val_speakers has unknown speakers \['z'\]; the known speakers are "
                                         r"\['a', 'b', 'c'\]"):
        split_by_speaker(data, ["a", "z"])
    with pytest.raises(ValueError, match=r"val_speakers=\['a', 'b', 'c'\] leaves train empty"):
        split_by_speaker(data, ["a", "b", "c"])
    with pytest.raises(TypeError, match="val_speakers must be a name or a non-empty collection of names"):
        split_by_speaker(data, [])
    with pytest.raises(ValueError, match="one shared leading length"):
        split_by_speaker({**data, "labels": np.zeros(3)}, ["a"])
    with pytest.raises(TypeError, match="'speakers' entry"):
        split_by_speaker({"waveform": data["waveform"]}, ["a"])
