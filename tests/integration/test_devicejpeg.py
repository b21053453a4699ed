"""JPEGs decoded on the model's device through torchvision (``jpeg_decoder = "torchvision"``), run
on the CPU: the same input and the same decisions as the CPU path, every other file left to it.

Which files the device may take is decided without torchvision and tested everywhere; what needs
torchvision (the ``gpu-decode`` extra) is skipped where it is not installed, as on CI, whose torch
build has no torchvision that loads beside it (run these in a venv with ``torch==2.14.1
torchvision==0.29.1``: ``pytest -n 0 tests/integration/test_devicejpeg.py``).
"""

from __future__ import annotations

import shutil
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from clipsort.cli import app
from clipsort.config import Settings, load_settings
from clipsort.decode.decoding import CROP_SLACK, Decoded, read_and_decode
from clipsort.decode.devicejpeg import DeviceJpeg, Encoded, read_jpeg
from clipsort.decode.images import Crop, DecodeLimits, centre_crop
from clipsort.encode.embedcache import EmbeddingCache
from clipsort.encode.encoder import Encoder
from clipsort.encode.factory import make_embedder
from clipsort.errors import ConfigError, ImageIncomplete
from clipsort.files import content_hash
from clipsort.layout import discover
from clipsort.sort.driver import Decoders
from clipsort.sort.oneshot import gather, run
from clipsort.sort.pipeline import Outcome
from clipsort.store.journal import Journal
from clipsort.store.mover import make_state_dir
from tests.synthetic import SHAPES, draw, make_dataset, save

LIMITS = DecodeLimits(("JPEG", "PNG"), max_pixels=50_000_000, max_bytes=50 * 2**20)


@pytest.fixture
def with_torchvision() -> None:
    pytest.importorskip("torchvision.io", reason="the gpu-decode extra (torchvision) is not installed")


def asymmetric(width: int = 640, height: int = 480) -> Image.Image:
    """A picture that no turn or mirror maps onto itself: two gradients, a block off the centre."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, np.full_like(x, 90)], axis=-1).astype(np.uint8)
    pixels[height // 4 : height // 2, width * 2 // 5 : width // 2] = (250, 30, 30)  # in every centre crop
    return Image.fromarray(pixels)


def jpeg(path: Path, picture: Image.Image, orientation: int = 1, **options: object) -> Path:
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    picture.save(path, "JPEG", quality=95, exif=exif, **options)
    return path


def cpu_crop(path: Path, side: int = 224) -> np.ndarray:
    """The CPU path's input for ``path``, as a decoding thread makes it."""
    return centre_crop(LIMITS.decode(path.read_bytes(), side, slack=CROP_SLACK), side)


def difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def decode_with(engine: DeviceJpeg, paths: list[Path]) -> list[Decoded]:
    """``paths`` decoded as the driver decodes a CLIP batch: ``engine`` in front of decoding threads."""
    decoders = Decoders(LIMITS, 2, processes=False, timeout=30)
    try:
        decoding = engine.over(decoders.threads)
        return decoding.collect(decoding.start(paths, 224, lambda picture: centre_crop(picture, 224)), 30)
    finally:
        engine.close()
        decoders.close()


def test_only_plain_complete_jpegs_within_the_limits_are_offered_to_the_device(tmp_path: Path) -> None:
    """Everything else is the CPU path's to decode or to reject with its reason."""
    picture = asymmetric(320, 240)
    plain = jpeg(tmp_path / "plain.jpg", picture)
    grey = jpeg(tmp_path / "grey.jpg", picture.convert("L"))
    progressive = jpeg(tmp_path / "progressive.jpg", picture, progressive=True)
    turned = jpeg(tmp_path / "turned.jpg", picture, orientation=6)
    cmyk = jpeg(tmp_path / "cmyk.jpg", picture.convert("CMYK"))
    png = tmp_path / "picture.png"
    picture.save(png)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(plain.read_bytes()[: plain.stat().st_size // 2])
    trailing = tmp_path / "motion.jpg"  # a phone's motion photo: a video after the JPEG's end
    trailing.write_bytes(plain.read_bytes() + b"\x00\x00\x00\x18ftypmp42" + bytes(64))
    link = tmp_path / "link.jpg"
    link.symlink_to(plain)
    big = jpeg(tmp_path / "big.jpg", asymmetric(1000, 1000))

    offered = {path.name: read_jpeg(path, LIMITS) for path in tmp_path.iterdir()}
    assert {name for name, item in offered.items() if item is not None} == {
        "plain.jpg",
        "grey.jpg",
        "progressive.jpg",
        "turned.jpg",
        "big.jpg",
    }
    item = offered["turned.jpg"]
    assert item is not None and (item.width, item.height, item.orientation) == (320, 240, 6)
    assert item.data == turned.read_bytes() and len(item.sha256) == 64
    assert read_jpeg(big, DecodeLimits(("JPEG",), max_pixels=999_999, max_bytes=2**20)) is None, "pixels"
    assert read_jpeg(big, DecodeLimits(("JPEG",), 50_000_000, max_bytes=1000)) is None, "bytes"
    assert read_jpeg(plain, DecodeLimits(("PNG",), 50_000_000, 2**20)) is None, "JPEG not allowed"
    assert all(offered[path.name] is None for path in (cmyk, png, truncated, trailing, link))
    for path in (grey, progressive):  # grey and progressive JPEGs are the device's as well
        also = offered[path.name]
        assert also is not None and (also.width, also.height, also.orientation) == (320, 240, 1)


@pytest.mark.usefixtures("with_torchvision")
@pytest.mark.parametrize("size", [(640, 480), (480, 640), (224, 300), (1200, 225)])
def test_the_devices_input_is_the_cpu_paths_for_every_exif_orientation(
    tmp_path: Path, size: tuple[int, int]
) -> None:
    """Turned as exif_transpose turns it, scaled and cropped as the processor does: a few levels apart.

    The picture is one no turn maps onto itself, so a wrong turn (or crop) is tens of levels off.
    """
    engine = DeviceJpeg("cpu", 1)
    try:
        for orientation in range(1, 9):
            path = jpeg(tmp_path / f"o{orientation}.jpg", asymmetric(*size), orientation)
            item = read_jpeg(path, LIMITS)
            assert item is not None
            (crop,) = engine.crops([item], 224)
            assert crop is not None and crop.shape == (224, 224, 3) and crop.dtype == np.uint8
            expected = cpu_crop(path)
            assert difference(crop, expected) < 1.0, orientation
            if orientation != 1:  # the same crop unturned is far from it: the check can fail
                assert difference(crop, cpu_crop(tmp_path / "o1.jpg")) > 15.0, orientation
    finally:
        engine.close()


@pytest.mark.usefixtures("with_torchvision")
def test_a_jpeg_the_device_refuses_is_decoded_or_rejected_by_the_cpu_path(tmp_path: Path) -> None:
    """A corrupt file that passes the header checks spoils the batched call: the others still decode
    on the device, and it goes to the CPU path, whose verdict (here: corrupt) it gets."""
    good = [jpeg(tmp_path / f"g{k}.jpg", asymmetric(320 + k, 240)) for k in range(3)]
    data = bytearray(good[0].read_bytes())
    data[data.index(b"\xff\xda") + 5] = 9  # the scan names a component the frame lacks
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(bytes(data))
    assert read_jpeg(broken, LIMITS) is not None, "its header and its ends pass"
    png = tmp_path / "p.png"
    asymmetric(300, 200).save(png)
    paths = [good[0], broken, png, good[1], good[2]]
    read = decode_with(DeviceJpeg("cpu", 2), paths)
    for path, decoded in zip(paths, read, strict=True):
        if path in good:  # the device's: no Pillow picture, the crop only
            assert decoded.picture is None and decoded.crop is not None, path
            assert difference(decoded.crop, cpu_crop(path)) < 1.0
    cpu_broken, cpu_png = read[1], read[2]
    assert isinstance(cpu_png.picture, Image.Image), "the PNG was the CPU path's"
    assert cpu_png.crop is not None and difference(cpu_png.crop, cpu_crop(png)) == 0.0
    alone = read_and_decode(broken, LIMITS, 224)
    assert isinstance(cpu_broken.picture, ImageIncomplete) and isinstance(alone.picture, ImageIncomplete)
    assert str(cpu_broken.picture) == str(alone.picture) and "corrupt" in str(alone.picture)
    assert (cpu_broken.sha256, cpu_broken.size) == (alone.sha256, len(data))


@pytest.mark.usefixtures("with_torchvision")
def test_releasing_a_batch_releases_what_the_cpu_path_lent_it(tmp_path: Path) -> None:
    """In front of the driver's decoding processes, which lend their crops from a slot a batch: the
    files the device leaves to them hold that slot until the batch is released. With one slot, three
    batches with a PNG in each decode only if releasing each batch gives the slot back."""
    engine = DeviceJpeg("cpu", 2)
    decoders = Decoders(LIMITS, 1, processes=True, timeout=30, ahead=0)
    processes = decoders.processes
    assert processes is not None and processes.lends
    png = tmp_path / "p.png"
    asymmetric(300, 200).save(png)
    paths = [jpeg(tmp_path / "g.jpg", asymmetric(320, 240)), png]
    pngs: list[Crop | None] = []

    def three_batches() -> None:
        decoding = engine.over(processes)
        for _ in range(3):
            futures = decoding.start(paths, 224, lambda picture: centre_crop(picture, 224))
            read = decoding.collect(futures, 30)
            assert read[1].picture is None, "the PNG: a process's crop alone"
            pngs.append(None if read[1].crop is None else read[1].crop.copy())
            decoding.release(futures)

    batches = threading.Thread(target=three_batches, daemon=True)
    try:
        batches.start()
        batches.join(60)
        assert not batches.is_alive(), "a batch waits for a slot that was never given back"
        assert len(pngs) == 3 and all(
            crop is not None and difference(crop, cpu_crop(png)) == 0.0 for crop in pngs
        )
    finally:  # not waiting: where the test fails, the engine's thread waits for a slot for ever
        engine.close(wait=False)
        decoders.close()


@pytest.mark.usefixtures("with_torchvision")
def test_a_device_that_fails_leaves_the_whole_batch_to_the_cpu_path(tmp_path: Path) -> None:
    """Asked for CUDA where there is none (as a lost GPU fails): every file still decoded, on the CPU."""
    import torch  # noqa: PLC0415  (loaded already: the device decoder imports it)

    if torch.cuda.is_available():
        pytest.skip("this machine has the device the test does without")
    paths = [jpeg(tmp_path / f"g{k}.jpg", asymmetric(320, 240 + k)) for k in range(3)]
    read = decode_with(DeviceJpeg("cuda", 1), paths)
    for path, decoded in zip(paths, read, strict=True):
        assert isinstance(decoded.picture, Image.Image), "decoded by the CPU path"
        assert decoded.crop is not None and difference(decoded.crop, cpu_crop(path)) == 0.0


@pytest.fixture
def mixed_inbox(tmp_path: Path) -> Path:
    """A dataset whose inbox mixes what the device takes with what it leaves to the CPU."""
    root = tmp_path / "template"
    make_dataset(root / "rgb", {"red": "red", "green": "green", "blue": "blue"}, references=3, seed=4)
    rng = np.random.default_rng(5)
    inbox = root / "rgb" / "Images"
    colours = ["red", "green", "blue"]
    for k in range(18):
        picture = draw(rng, colours[k % 3], SHAPES[k % 3], size=int(rng.integers(60, 160)))
        wide = picture.resize((640, 480) if k % 2 else (480, 640), Image.Resampling.BICUBIC)
        jpeg(inbox / f"j{k:02d}.jpg", wide, orientation=1 + k % 8, progressive=k % 5 == 0)
    for k in range(6):
        save(draw(rng, colours[k % 3], SHAPES[k % 3], size=100), inbox / f"p{k}.png")
    jpeg(inbox / "cmyk.jpg", draw(rng, "red", SHAPES[0], size=200).convert("CMYK"))
    jpeg(inbox / "grey.jpg", draw(rng, "green", SHAPES[1], size=200).convert("L"))
    (inbox / "notes.jpg").write_bytes(b"not a picture at all")
    whole = (inbox / "j01.jpg").read_bytes()
    (inbox / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    return root


def sort_copy(
    template: Path, to: Path, tiny_model: Path, encoder: Encoder, **options: object
) -> list[Outcome]:
    shutil.copytree(template, to / "Data")
    settings: Settings = load_settings(
        None, {"root": to / "Data", "model": str(tiny_model), "batch_size": 8, **options}
    )
    make_state_dir(to / "state")
    outcomes: list[Outcome] = []
    with EmbeddingCache(to / "cache.sqlite3") as cache, Journal(to / "state") as journal:
        embedder = make_embedder(settings, encoder, cache)
        work = gather(discover(settings.root), settings, embedder, named=False)
        run(work, settings, embedder, journal=journal, dry_run=False, on_outcome=outcomes.append)
    return outcomes


def fates(outcomes: list[Outcome]) -> dict[str, tuple[str, str | None]]:
    """Each file's status and class (the guess for one held for review)."""
    return {
        outcome.source.name: (outcome.status, None if outcome.decision is None else outcome.decision.label)
        for outcome in outcomes
    }


@pytest.mark.usefixtures("with_torchvision")
def test_a_mixed_batch_gets_the_same_decisions_on_the_device_as_on_the_cpu(
    mixed_inbox: Path,
    tmp_path: Path,
    tiny_model: Path,
    encoder: Encoder,
    data_root: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``clipsort sort``'s run, once per decoder, over copies of one inbox: every file's fate the same."""
    on_cpu = sort_copy(mixed_inbox, tmp_path / "cpu", tiny_model, encoder)
    taken: list[str] = []  # what the device decoded: the plain JPEGs, and nothing else
    crops = DeviceJpeg.crops

    def counted(engine: DeviceJpeg, items: Sequence[Encoded], side: int) -> list[Crop | None]:
        made = crops(engine, items, side)
        taken.extend(item.sha256 for item, crop in zip(items, made, strict=True) if crop is not None)
        return made

    monkeypatch.setattr(DeviceJpeg, "crops", counted)
    on_device = sort_copy(mixed_inbox, tmp_path / "device", tiny_model, encoder, jpeg_decoder="torchvision")
    inbox = mixed_inbox / "rgb" / "Images"
    plain = sorted([*(f"j{k:02d}.jpg" for k in range(18)), "grey.jpg"])
    assert sorted(taken) == sorted(content_hash(inbox / name) for name in plain)
    cpu, device = fates(on_cpu), fates(on_device)
    assert len(cpu) == 28, "every file has a fate"
    assert device == cpu
    assert sum(status == "sorted" for status, _ in cpu.values()) >= 20, "the tiny model sorts colours"
    assert cpu["notes.jpg"] == cpu["cut.jpg"] == ("rejected", None)
    scores = {outcome.source.name: outcome.decision.score for outcome in on_cpu if outcome.decision}
    for outcome in on_device:
        if outcome.decision is not None:
            assert outcome.decision.score == pytest.approx(scores[outcome.source.name], abs=0.02)


@pytest.mark.usefixtures("with_torchvision")
def test_the_device_decoder_is_part_of_the_pools_a_setting_change_rebuilds(
    data_root: Path, tiny_model: Path
) -> None:
    """Made on the configured device; pictures (no CLIP crops wanted) still go to the threads."""
    options = {"model": str(tiny_model), "jpeg_decoder": "torchvision", "decode_in": "threads"}
    settings = load_settings(None, {"root": data_root, "decode_workers": 1, **options})
    with Decoders.configured(settings, DecodeLimits.from_settings(settings)) as decoders:
        assert decoders.device_jpeg is not None and decoders.device_jpeg.device == "cpu"
        assert decoders.pick([False]) is decoders.threads
        assert decoders.pick([True, False]) is decoders.threads, "a batch with a picture in it"
        assert decoders.suits(settings)
        assert not decoders.suits(settings.model_copy(update={"jpeg_decoder": "pillow"}))


def test_torchvision_asked_for_but_not_installed_is_a_config_error_before_the_model_loads(
    data_root: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found (not imported) when the settings load: exit 2, the setting's line, no traceback."""
    monkeypatch.setitem(sys.modules, "torchvision", None)  # Python's own way of blocking an import
    with pytest.raises(
        ConfigError, match=r"torchvision is not installed: pip install 'clipsort\[gpu-decode\]'"
    ):
        load_settings(None, {"root": data_root, "jpeg_decoder": "torchvision"})
    runner = CliRunner(env={"CLIPSORT_JPEG_DECODER": "torchvision"})
    result = runner.invoke(app, ["sort", "--root", str(data_root), "--model", str(tiny_model)])
    assert result.exit_code == 2, result.output
    assert "jpeg_decoder = 'torchvision': Value error, torchvision is not installed" in result.stderr
    assert "Traceback" not in result.output
