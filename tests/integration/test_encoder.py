"""Tests for clipsort.encode.encoder: loading, device choice and unit-length vectors."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from PIL import Image
from structlog.testing import capture_logs

from clipsort.config import CPU_BATCH, GPU_BATCH, load_settings, resolve_batch
from clipsort.decode.decodeprocesses import address_of
from clipsort.decode.images import DecodeLimits
from clipsort.encode import encoder as encoder_module
from clipsort.encode.compiled import CompiledClip
from clipsort.encode.embeddings import Embedder
from clipsort.encode.encoder import (
    Encoder,
    ImageTower,
    _pictures,
    cpu_has_bf16,
    load_clip,
    load_model,
    model_identity,
    resolve_device,
    resolve_threads,
)
from clipsort.encode.hub import looks_like_path
from clipsort.encode.pinned import CudaHostRegistration
from clipsort.encode.plainclip import PlainClip
from clipsort.errors import ModelLoadError
from tests.helpers import clipsort_process, python_process
from tests.synthetic import draw, kept_clip, make_dataset


def test_vectors_are_unit_length_float32(encoder: Encoder) -> None:
    """Images and texts both come back as L2-normalised float32 rows."""
    rng = np.random.default_rng(0)
    images = encoder.encode_images([draw(rng, "red"), draw(rng, "blue")])
    texts = encoder.encode_texts(["red", "blue", "a photo of a green square."])
    assert images.dtype == texts.dtype == np.float32
    assert images.shape == (2, encoder.dimension)
    assert np.linalg.norm(texts, axis=1) == pytest.approx(np.ones(3), abs=1e-5)


def test_empty_batch_is_an_empty_matrix(encoder: Encoder) -> None:
    """Nothing to encode gives zero rows of the right width."""
    assert encoder.encode_images([]).shape == (0, encoder.dimension)


def test_input_size_is_read_from_the_processor(encoder: Encoder) -> None:
    """The tiny model's processor crops to 32 pixels; decoding aims at that."""
    assert encoder.image_size == 32


def test_identity_changes_when_weights_change(tiny_model: Path, tmp_path: Path) -> None:
    """Caches key on identity, so a copied-over checkpoint must not look the same."""
    copy = Path(shutil.copytree(tiny_model, tmp_path / "m"))
    first = Encoder(str(copy), "cpu").identity
    assert Encoder(str(copy), "cpu").identity == first
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes() + b" ")
    assert model_identity(str(copy)) != first


def test_missing_local_path_says_so(tmp_path: Path) -> None:
    """A path that is not there is reported as a path, not as a hub lookup."""
    with pytest.raises(ModelLoadError, match=r"model path .* does not exist"):
        Encoder(str(tmp_path / "nothing"), "cpu")


def test_hub_name_offline_explains_the_way_out() -> None:
    """With the hub unreachable (HF_HUB_OFFLINE=1) the message says to use a local folder, or demo-model."""
    expected = r"give a local model folder with --model.*clipsort demo-model DIR"
    with pytest.raises(ModelLoadError, match=expected):
        Encoder("clipsort-test/no-such-model", "cpu")


def test_device_resolution() -> None:
    """Explicit devices are kept; auto falls back to the CPU here."""
    assert resolve_device("cuda:1") == "cuda:1"
    assert resolve_device("auto") in {"cpu", "cuda", "mps"}
    assert looks_like_path("./m") and looks_like_path("/m") and not looks_like_path("org/model")


def test_model_threads_are_automatic_per_device() -> None:
    """0 leaves torch's default on the CPU and means one thread on a GPU; a number is kept."""
    assert resolve_threads(0, "cpu") is None
    assert resolve_threads(0, "cuda:0") == 1
    assert resolve_threads(3, "cpu") == 3


def test_batch_size_is_automatic_per_device(tiny_model: Path, data_root: Path) -> None:
    """0 (the default) gives 256 on a GPU and 32 elsewhere; a number is kept. The embedder answers
    for the device its model was loaded on."""
    assert (resolve_batch(0, "cpu"), resolve_batch(0, "mps")) == (CPU_BATCH, CPU_BATCH) == (32, 32)
    assert resolve_batch(0, "cuda") == resolve_batch(0, "cuda:1") == GPU_BATCH == 256
    assert resolve_batch(8, "cuda:0") == resolve_batch(8, "cpu") == 8
    settings = load_settings(None, {"model": str(tiny_model)})
    assert settings.batch_size == 0
    embedder = Embedder(Encoder(str(tiny_model), "cpu"), DecodeLimits(("PNG",), 10**8, 2**30))
    assert embedder.batch_size(settings) == 32
    assert embedder.batch_size(settings.model_copy(update={"batch_size": 5})) == 5
    assert Embedder(None, embedder.limits).batch_size(settings.model_copy(update={"device": "cpu"})) == 32


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core cannot show a second one idle")
def test_one_model_thread_holds_on_the_thread_that_encodes(tiny_model: Path) -> None:
    """With threads = 1 a forward pass on a fresh thread keeps to one core (part of it is set per thread)."""
    model = Encoder(str(tiny_model), "cpu", threads=1)
    crops = [np.full((model.image_size, model.image_size, 3), k, np.uint8) for k in range(128)]
    ratios: list[float] = []

    def encode() -> None:
        model.encode_images(crops)  # applies the setting, warms up
        cpu, wall = time.process_time(), time.perf_counter()
        while time.perf_counter() - wall < 1.0:
            model.encode_images(crops)
        ratios.append((time.process_time() - cpu) / (time.perf_counter() - wall))

    worker = threading.Thread(target=encode)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive() and len(ratios) == 1
    assert ratios[0] < 1.3, f"{ratios[0]:.2f} cores busy during a one-thread forward pass"


def test_the_direct_image_path_agrees_with_sentence_transformers(encoder: Encoder) -> None:
    """uint8 pixels normalised on the device give the processor's vectors, whatever the picture's shape."""
    rng = np.random.default_rng(0)
    pictures = [
        draw(rng, color, "circle", size=size) for color, size in (("red", 64), ("green", 224), ("blue", 300))
    ]
    pictures += [
        draw(rng, "red", "square", 400).resize((400, 250)),
        draw(rng, "blue", "square", 400).resize((230, 500)),
    ]
    direct = encoder.encode_images(pictures)
    reference = encoder._encode(load_model(encoder.name, "cpu"), pictures)
    assert np.allclose(direct, reference, atol=1e-5)


def test_a_plain_clip_folder_encodes_as_sentence_transformers_does(tiny_model: Path, tmp_path: Path) -> None:
    """Loaded with transformers alone, a plain CLIP folder gives sentence-transformers' vectors: texts
    short and past the tokenizer's limit (truncated alike), and pictures through the processor."""
    plain, wrapped = load_clip(str(tiny_model), "cpu"), load_model(str(tiny_model), "cpu")
    assert isinstance(plain, PlainClip)
    texts = ["red", "a photo of a blue square.", "ünïcödé ☃", " ".join(["green circle"] * 80)]
    rng = np.random.default_rng(5)
    pictures = [draw(rng, "red", "circle", size=64), draw(rng, "blue", "square", 300).resize((300, 180))]
    for items in (texts, pictures):
        ours = plain.encode(items)
        theirs = wrapped.encode(items, convert_to_numpy=True, normalize_embeddings=True)
        assert ours.dtype == np.float32 and ours.shape == theirs.shape
        assert np.allclose(ours, theirs, atol=1e-6)
    assert plain.get_embedding_dimension() == wrapped.get_embedding_dimension()
    assert set(plain.modalities) == {str(modality) for modality in wrapped.modalities}
    # A folder sentence-transformers saved (modules.json) stays with sentence-transformers.
    wrapped.save(str(tmp_path / "st"))
    assert not isinstance(load_clip(str(tmp_path / "st"), "cpu"), PlainClip)


def test_an_encoder_on_a_plain_clip_folder_never_imports_sentence_transformers(tiny_model: Path) -> None:
    """The daemon's start on such a folder skips sentence-transformers' import (1.3 s of CPU here)."""
    probe = python_process(
        "-c",
        "import sys; from clipsort.encode.encoder import Encoder; "
        f"e = Encoder({str(tiny_model)!r}, 'cpu'); e.encode_texts(['red']); "
        "print('sentence_transformers' in sys.modules, 'transformers' in sys.modules)",
    )
    assert probe.stdout.splitlines()[-1].split() == ["False", "True"], probe.stdout + probe.stderr


TEXTS = ["red", "a photo of a blue square.", "ünïcödé ☃", " ".join(["green circle"] * 80)]


def test_a_compiled_copy_encodes_as_the_model_and_starts_without_transformers(
    tiny_model: Path, tmp_path: Path
) -> None:
    """The first start on a plain CLIP folder keeps its towers as TorchScript; a later start in a new
    process loads them without importing transformers and gives the same vectors, texts past the
    tokenizer's limit included, and the same size, scale, width and vocabulary."""
    cache = tmp_path / "compiled"
    first = Encoder(str(tiny_model), "cpu", precision="auto", compiled_in=cache)
    assert isinstance(first._model, PlainClip), "the first start loads the folder with transformers"
    [entry] = cache.iterdir()
    assert sorted(p.name for p in entry.iterdir()) == ["image.pt", "meta.json", "text.pt", "tokenizer.json"]
    rng = np.random.default_rng(4)
    pictures = [draw(rng, "red", "circle", size=64), draw(rng, "blue", "square", 300).resize((300, 180))]
    for index, picture in enumerate(pictures):
        picture.save(tmp_path / f"{index}.png")
    probe = python_process(
        "-c",
        "import json, sys; from pathlib import Path; from PIL import Image; "
        "from clipsort.encode.encoder import Encoder; "
        f"e = Encoder({str(tiny_model)!r}, 'cpu', precision='auto', compiled_in=Path({str(cache)!r})); "
        f"texts = e.encode_texts({TEXTS!r}).tolist(); "
        f"images = e.encode_images([Image.open(f'{tmp_path}/{{i}}.png').convert('RGB') for i in (0, 1)]); "
        "print(json.dumps({'texts': texts, 'images': images.tolist(), 'size': e.image_size, "
        "'scale': e.logit_scale, 'width': e.dimension, 'words': list(e.vocabulary()), "
        "'type': type(e._model).__name__, 'transformers': 'transformers' in sys.modules}))",
    )
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout.splitlines()[-1])
    assert found["type"] == "CompiledClip" and found["transformers"] is False, found["type"]
    assert np.allclose(found["texts"], first.encode_texts(TEXTS), atol=1e-6)
    loaded = [Image.open(tmp_path / f"{index}.png").convert("RGB") for index in (0, 1)]
    assert np.allclose(found["images"], first.encode_images(loaded), atol=1e-6)
    assert (found["size"], found["width"]) == (first.image_size, first.dimension)
    assert found["scale"] == pytest.approx(first.logit_scale)
    assert tuple(found["words"]) == first.vocabulary()


def test_a_changed_folder_a_damaged_entry_or_an_unwritable_cache_loads_the_folder(
    tiny_model: Path, tmp_path: Path
) -> None:
    """A compiled copy is used only for the very folder it was made from, and pruned once that folder
    changes or is gone; one that cannot be read is logged and passed over; a cache that cannot be
    written costs the next start, never this one."""
    folder = Path(shutil.copytree(tiny_model, tmp_path / "m"))
    cache = tmp_path / "compiled"
    made = Encoder(str(folder), "cpu", compiled_in=cache)
    expected = made.encode_texts(TEXTS)
    assert isinstance(Encoder(str(folder), "cpu", compiled_in=cache)._model, CompiledClip)
    [before] = cache.iterdir()
    os.utime(folder / "config.json", ns=(1, 1))  # a changed folder: a new identity, so a new entry
    assert isinstance(Encoder(str(folder), "cpu", compiled_in=cache)._model, PlainClip)
    [after] = cache.iterdir()
    assert after != before, "the changed folder's old entry is pruned when its new one is made"
    gone = Path(shutil.copytree(tiny_model, tmp_path / "gone"))
    Encoder(str(gone), "cpu", compiled_in=cache)
    assert len(list(cache.iterdir())) == 2
    shutil.rmtree(gone)
    os.utime(folder / "config.json", ns=(2, 2))
    Encoder(str(folder), "cpu", compiled_in=cache)
    [last] = cache.iterdir()
    assert last not in (before, after), "a removed folder's entry is pruned at the next one made"
    for entry in cache.iterdir():
        (entry / "text.pt").write_bytes(b"not a graph")
    with capture_logs() as logs:
        damaged = Encoder(str(folder), "cpu", compiled_in=cache)
    assert isinstance(damaged._model, PlainClip)
    assert [e["event"] for e in logs if e["event"] == "compiled_model_unusable"] == [
        "compiled_model_unusable"
    ]
    assert np.allclose(damaged.encode_texts(TEXTS), expected, atol=1e-6)
    remade = Encoder(str(folder), "cpu", compiled_in=cache)
    assert isinstance(remade._model, CompiledClip), "the damaged entry was made anew"
    assert np.allclose(remade.encode_texts(TEXTS), expected, atol=1e-6)
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    with capture_logs() as logs:
        unwritable = Encoder(str(folder), "cpu", compiled_in=blocked / "compiled")
    assert [e for e in logs if e["event"] == "model_not_compiled"] != []
    assert np.allclose(unwritable.encode_texts(TEXTS), expected, atol=1e-6)


def test_crops_made_ahead_give_the_pictures_vectors(encoder: Encoder) -> None:
    """Pictures made into the model's input elsewhere (the decoding threads) encode as the pictures do."""
    rng = np.random.default_rng(3)
    pictures = [draw(rng, "red", "circle", size=90), draw(rng, "blue", "square", 400).resize((400, 250))]
    crop = encoder.crop
    assert crop is not None
    crops = [crop(picture) for picture in pictures]
    assert np.allclose(encoder.encode_images(crops), encoder.encode_images(pictures), atol=1e-6)
    mixed = encoder.encode_images([crops[0], pictures[1]])
    assert np.allclose(mixed, encoder.encode_images(pictures), atol=1e-6)
    # The sentence-transformers path (the CPU copy after an accelerator failure) takes them too.
    assert np.allclose(encoder._encode(encoder._model, _pictures(crops)), mixed, atol=1e-5)


@pytest.mark.parametrize("size", [(80, 60), (60, 80), (75, 32), (32, 32), (300, 200)])
def test_the_crop_is_the_processors_resize_and_centre_crop(encoder: Encoder, size: tuple[int, int]) -> None:
    """Resizing only the crop's box gives the processor's pixels but for rounding, in either orientation."""
    crop = encoder.crop
    assert crop is not None
    picture = draw(np.random.default_rng(5), "green", "circle", size=400).resize(size)
    module: Any = encoder._model[0]  # sentence-transformers' CLIP module, with the model's processor
    processor = module.processor.image_processor
    expected = processor(images=picture, do_rescale=False, do_normalize=False, return_tensors="np")
    pixels = np.transpose(expected["pixel_values"][0], (1, 2, 0)).round()
    difference = np.abs(crop(picture).astype(np.float64) - pixels)
    assert difference.shape == (encoder.image_size, encoder.image_size, 3)
    assert difference.mean() < 0.05 and np.quantile(difference, 0.99) <= 1


def test_the_image_side_runs_as_one_traced_graph(encoder: Encoder) -> None:
    """A plain CLIPModel is traced once at load; the graph gives eager's vectors at any batch size."""
    tower = encoder._tower
    assert tower is not None and tower.graph is not None
    generator = torch.Generator().manual_seed(1)
    side = encoder.image_size
    with torch.inference_mode():
        for size in (1, 5, 33):
            crops = torch.randint(0, 256, (size, side, side, 3), generator=generator, dtype=torch.uint8)
            values = crops.permute(0, 3, 1, 2)  # as ImageTower.pixels hands them over
            assert torch.allclose(tower.forward(values), tower.eager(values), atol=1e-5)


def test_crops_that_are_rows_of_one_array_reach_the_model_without_a_copy(encoder: Encoder) -> None:
    """Consecutive rows of one array, in order (how the decoding processes hand a batch over), go
    to the model as a view of that array; rows with a gap, out of order or from several arrays are
    stacked; the vectors are the same either way."""
    tower = encoder._tower
    assert tower is not None
    side = encoder.image_size
    batch = np.random.default_rng(3).integers(0, 256, (6, side, side, 3), dtype=np.uint8)
    other = batch.copy()

    def shared(crops: list[npt.NDArray[np.uint8]]) -> bool:
        return bool(np.shares_memory(tower.pixels(crops).permute(0, 2, 3, 1).numpy(), batch))

    assert shared([batch[k] for k in range(1, 5)]) and shared([batch[5]])
    assert not shared([batch[0], batch[2]]), "a rejected file between two"
    assert not shared([batch[2], batch[1]]) and not shared([batch[0], other[1]])
    rows = [batch[k] for k in range(6)]
    copies = [row.copy() for row in rows]
    assert np.allclose(encoder.encode_images(rows), encoder.encode_images(copies), atol=1e-6)
    # Given a pinned staging buffer (the CUDA path), rows of an array that is not pinned itself
    # are stacked into it: only a slot registered for the GPU is copied from where it lies.
    staging = np.zeros((8, side, side, 3), np.uint8)
    stacked = tower.pixels(rows[1:5], staging).permute(0, 2, 3, 1).numpy()
    assert np.shares_memory(stacked, staging) and not np.shares_memory(stacked, batch)
    assert np.array_equal(stacked, batch[1:5])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_slot_registered_for_the_gpu_is_copied_from_where_it_lies() -> None:
    """On CUDA a decoding slot page-locked by :class:`CudaHostRegistration` reads as pinned, so the
    tower copies a batch to the GPU straight from it (no stacking into its staging buffer); once
    unregistered it is stacked again. The copy reaches the GPU intact."""
    side = 32
    memory = shared_memory.SharedMemory(create=True, size=4 * side * side * 3)
    try:
        slot = np.ndarray((4, side, side, 3), np.uint8, buffer=memory.buf)
        slot[:] = np.random.default_rng(5).integers(0, 256, slot.shape, dtype=np.uint8)
        rows = [slot[k] for k in range(4)]
        tower, registration, address = (
            ImageTower(side, "cuda", None),
            CudaHostRegistration(),
            address_of(memory),
        )
        staging = tower.staging(4)
        assert staging is not None
        assert registration.register(address, memory.size)
        try:
            pixels = tower.pixels(rows, staging)
            assert pixels.is_pinned() and pixels.data_ptr() == address
            on_gpu = pixels.to("cuda", non_blocking=True)
            assert np.array_equal(on_gpu.permute(0, 2, 3, 1).cpu().numpy(), slot)
        finally:
            registration.unregister(address)
        assert tower.pixels(rows, staging).data_ptr() != address
        del slot, rows, pixels
    finally:
        memory.close()
        memory.unlink()


@pytest.mark.parametrize("shape", ["patches in chunks", "one patch a picture"])
def test_the_patch_products_give_transformers_own_vectors(
    shape: str, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The patch embedding done as products of uint8 rows a chunk at a time (in floats that stay in
    cache) gives what transformers' own convolution of normalised floats gives: with chunks that
    do not divide a patch's row, and with a picture that is one patch (the benchmarks' stand-in,
    ten chunks of its 150,528 values)."""
    if shape == "patches in chunks":
        monkeypatch.setattr(encoder_module, "PATCH_CHUNK", 50)  # read as the graph is traced
        model = tiny_model
    else:
        model = kept_clip(width=8, patch=224)
    ours, plain = Encoder(str(model), "cpu"), PlainClip(model, "cpu")
    assert ours._tower is not None and ours._tower.graph is not None
    rng = np.random.default_rng(7)
    kinds = [(color, kind) for color in ("red", "blue") for kind in ("circle", "square")]
    pictures = [draw(rng, color, kind, size=300) for color, kind in kinds]
    crops = [ours._tower.crop(picture) for picture in pictures]
    expected = plain.encode([Image.fromarray(crop) for crop in crops])
    assert np.allclose(ours.encode_images(crops), expected, atol=1e-5)


def test_a_model_that_cannot_be_traced_runs_eagerly(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failing trace is logged and costs nothing but speed: the vectors stay the processor's."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("tracing is not supported for this model")

    monkeypatch.setattr(torch.jit, "trace", refuse)
    with capture_logs() as logs:
        eager = Encoder(str(tiny_model), "cpu")
    assert eager._tower is not None and eager._tower.graph is None
    assert [entry["reason"] for entry in logs if entry["event"] == "model_not_traced"] == [
        "RuntimeError: tracing is not supported for this model"
    ]
    pictures = [draw(np.random.default_rng(2), color) for color in ("red", "green", "blue")]
    assert np.allclose(eager.encode_images(pictures), eager._encode(eager._model, pictures), atol=1e-5)


@pytest.mark.skipif(not cpu_has_bf16(), reason="needs a CPU with native bf16 (AMX or AVX-512 BF16)")
def test_bf16_makes_the_same_decisions_as_fp32(tiny_model: Path, encoder: Encoder) -> None:
    """precision = auto picks bf16 on such CPUs: at least 99% of 240 pictures get the same class."""
    half = Encoder(str(tiny_model), "cpu", precision="auto")
    assert half.precision == "bf16" and half.identity.endswith("@bf16")
    rng = np.random.default_rng(7)
    colors = ["red", "green", "blue", "yellow", "purple", "orange"]
    references = [draw(rng, color, "circle") for color in colors for _ in range(3)]
    labels = np.repeat(np.arange(len(colors)), 3)
    pictures = [
        draw(
            rng, colors[k % len(colors)], ("circle", "square", "triangle")[k % 3], int(rng.integers(40, 200))
        )
        for k in range(240)
    ]

    def decisions(model: Encoder) -> np.ndarray:
        similarity = model.encode_images(pictures) @ model.encode_images(references).T
        best = np.stack([similarity[:, labels == c].max(axis=1) for c in range(len(colors))], axis=1)
        return np.asarray(np.argmax(best, axis=1), dtype=np.int64)

    assert np.mean(decisions(half) == decisions(encoder)) >= 0.99


def test_an_unreachable_hub_fails_in_seconds_naming_demo_model(data_root: Path, tmp_path: Path) -> None:
    """No network and no cached model: one line naming `clipsort demo-model`, within seconds, exit 2."""
    with socket.socket() as probe:  # a loopback port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {key: value for key, value in os.environ.items() if not key.endswith("_OFFLINE")}
    env |= {"HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HOME": str(tmp_path / "hf")}
    make_dataset(data_root / "ds", {"red": "red"}, references=1, inbox=["red"])  # the model is needed
    started = time.monotonic()
    done = clipsort_process("sort", "--root", str(data_root), env=env)
    assert done.returncode == 2, done.stderr
    assert "hub is unreachable" in done.stderr and "clipsort demo-model DIR" in done.stderr
    assert "Retrying" not in done.stderr and "Traceback" not in done.stderr
    assert time.monotonic() - started < 60, "huggingface_hub's back-off alone takes about 86 s"
