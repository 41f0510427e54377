#!/usr/bin/env python3
"""Build the seed corpus of the fuzz targets in fuzz/seeds/TARGET/ (committed).

Sources: the sample files of pip's pydicom and pydicom-data, our own fixtures
(scripts/fixtures.sh), the reference model's manifest, and small files made here with
pydicom, Pillow (JPEG baseline), pyjpegls (JPEG-LS), highdicom (SEG, SR) and a few lines of
lossless JPEG (Process 14) below. Every seed is under 100 KB; the whole corpus is a few
hundred KB. Deterministic apart from the UIDs highdicom makes up; re-run only to change the
corpus (`python3 fuzz/make_seeds.py`), then commit the result.
"""

from __future__ import annotations

import copy
import io
import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

REPO = Path(__file__).resolve().parent.parent
SEEDS = REPO / "fuzz" / "seeds"
PYDICOM = Path(pydicom.data.__file__).parent / "test_files"
MAX_SEED = 100_000
SEPARATOR = b"RADIANT-FUZZ-NEXT-FILE"


def pydicom_file(name: str) -> Path:
    """A sample of pydicom or pydicom-data, by file name."""
    direct = PYDICOM / name
    if direct.exists():
        return direct
    return Path(pydicom.data.get_testdata_file(name))


def write(target: str, name: str, data: bytes) -> None:
    assert len(data) < MAX_SEED, f"{target}/{name}: {len(data)} bytes"
    folder = SEEDS / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)


def to_bytes(ds: pydicom.Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


# --- volume: one small monochrome image with geometry per accepted transfer syntax ----------

def with_geometry(ds: pydicom.Dataset, z: float = 0.0) -> pydicom.Dataset:
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0, 0, z]
    ds.PixelSpacing = [0.5, 0.5]
    ds.SliceThickness = 2
    for tag, value in (("SeriesInstanceUID", "1.2.3.4.5"), ("StudyInstanceUID", "1.2.3.4"),
                       ("FrameOfReferenceUID", "1.2.3.4.6")):
        if tag not in ds:
            setattr(ds, tag, value)
    return ds


def small_ct(rows: int = 8, columns: int = 8, z: float = 0.0, instance: int = 1) -> pydicom.Dataset:
    """A minimal CT slice (what volume::build and highdicom need) of rows x columns signed
    16-bit pixels from CT_small.dcm, with geometry and rescale."""
    pixels = pydicom.dcmread(pydicom_file("CT_small.dcm")).pixel_array
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.3.4.5.{instance}"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = f"1.2.3.4.5.{instance}"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20260101", "120000", "A1"
    ds.Modality, ds.Manufacturer, ds.ReferringPhysicianName = "CT", "fuzz", ""
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Fuzz^Seed", "P1", "", "O"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3.4", "1.2.3.4.5"
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, instance
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = "1.2.3.4.6", ""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
    ds.KVP = 120
    ds.PixelData = pixels[:rows, :columns].astype(np.int16).tobytes()
    return with_geometry(ds, z)


def eight_bit(ds: pydicom.Dataset) -> tuple[pydicom.Dataset, np.ndarray]:
    pixels = (np.arange(ds.Rows * ds.Columns) * 7 % 251).astype(np.uint8)
    pixels = pixels.reshape(ds.Rows, ds.Columns)
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    return ds, pixels


def encapsulated(ds: pydicom.Dataset, frames: list[bytes], syntax: str) -> bytes:
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return to_bytes(ds)


def jpeg_baseline(pixels: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(out, format="JPEG", quality=90)
    return out.getvalue()


# Standard DC luminance Huffman table (ITU T.81 K.3), good for categories 0-11.
DC_BITS = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
DC_VALUES = list(range(12))


def huffman_codes(bits: list[int], values: list[int]) -> dict[int, tuple[int, int]]:
    codes, code, k = {}, 0, 0
    for length in range(1, 17):
        for _ in range(bits[length - 1]):
            codes[values[k]] = (code, length)
            code += 1
            k += 1
        code <<= 1
    return codes


def jpeg_lossless(pixels: np.ndarray, predictor: int) -> bytes:
    """An 8-bit lossless JPEG (ITU T.81 annex H, Process 14) with the given predictor."""
    rows, columns = pixels.shape
    p = pixels.astype(np.int32)
    codes = huffman_codes(DC_BITS, DC_VALUES)
    bits: list[int] = []

    def put(value: int, length: int) -> None:
        bits.extend((value >> (length - 1 - i)) & 1 for i in range(length))

    for y in range(rows):
        for x in range(columns):
            if x == 0 and y == 0:
                prediction = 128
            elif y == 0:
                prediction = p[y, x - 1]
            elif x == 0:
                prediction = p[y - 1, x]
            else:
                a, b, c = p[y, x - 1], p[y - 1, x], p[y - 1, x - 1]
                prediction = [0, a, b, c, a + b - c, a + ((b - c) >> 1),
                              b + ((a - c) >> 1), (a + b) // 2][predictor]
            diff = (int(p[y, x]) - int(prediction)) % 65536
            if diff >= 32768:
                diff -= 65536
            size = abs(diff).bit_length()
            put(*codes[size])
            if size:
                put(diff if diff >= 0 else diff + (1 << size) - 1, size)
    bits.extend([1] * (-len(bits) % 8))
    scan = bytearray()
    for i in range(0, len(bits), 8):
        byte = int("".join(map(str, bits[i:i + 8])), 2)
        scan.append(byte)
        if byte == 0xFF:
            scan.append(0)
    dht = bytes([0x00]) + bytes(DC_BITS) + bytes(DC_VALUES)
    sof = struct.pack(">BHHB", 8, rows, columns, 1) + bytes([1, 0x11, 0])
    sos = bytes([1, 1, 0x00, predictor, 0, 0])
    segment = lambda marker, body: struct.pack(">BBH", 0xFF, marker, len(body) + 2) + body
    return (b"\xff\xd8" + segment(0xC4, dht) + segment(0xC3, sof) + segment(0xDA, sos)
            + bytes(scan) + b"\xff\xd9")


def jpeg_ls(pixels: np.ndarray, near: int) -> bytes:
    import jpeg_ls

    return bytes(jpeg_ls.encode(pixels, lossy_error=near))


def volume_seeds() -> None:
    target = "volume"
    base = small_ct()
    write(target, "explicit_le.dcm", to_bytes(copy.deepcopy(base)))
    for name, syntax in (("implicit_le.dcm", ImplicitVRLittleEndian),
                         ("deflated.dcm", DeflatedExplicitVRLittleEndian)):
        ds = copy.deepcopy(base)
        ds.file_meta.TransferSyntaxUID = syntax
        write(target, name, to_bytes(ds))
    rle = copy.deepcopy(base)
    rle.compress(RLELossless)
    write(target, "rle.dcm", to_bytes(rle))
    ds8, pixels8 = eight_bit(copy.deepcopy(base))
    for name, syntax, frame in (
        ("jpeg_baseline.dcm", "1.2.840.10008.1.2.4.50", jpeg_baseline(pixels8)),
        ("jpeg_extended_8bit.dcm", "1.2.840.10008.1.2.4.51", jpeg_baseline(pixels8)),
        ("jpeg_lossless_p14.dcm", "1.2.840.10008.1.2.4.57", jpeg_lossless(pixels8, 6)),
        ("jpeg_lossless_sv1.dcm", "1.2.840.10008.1.2.4.70", jpeg_lossless(pixels8, 1)),
        ("jpeg_ls_lossless.dcm", "1.2.840.10008.1.2.4.80", jpeg_ls(pixels8, 0)),
        ("jpeg_ls_near_lossless.dcm", "1.2.840.10008.1.2.4.81", jpeg_ls(pixels8, 2)),
    ):
        write(target, name, encapsulated(copy.deepcopy(ds8), [frame], syntax))
    # JPEG 2000 (both syntaxes) and JPEG Extended 12-bit (refused by name): samples as shipped,
    # with geometry added where they lack it.
    for name, source in (("j2k_lossless.dcm", "MR_small_jp2klossless.dcm"),
                         ("j2k.dcm", "693_J2KI.dcm"),
                         ("jpeg_extended_12bit.dcm", "JPGExtended.dcm"),
                         ("mr_jpeg_ls.dcm", "MR_small_jpeg_ls_lossless.dcm"),
                         ("mr_rle.dcm", "MR_small_RLE.dcm"),
                         ("explicit_be.dcm", "MR_small_bigendian.dcm")):
        ds = with_geometry(pydicom.dcmread(pydicom_file(source)))
        write(target, name, to_bytes(ds))
    # Enhanced MR, 10 frames, JPEG-LS, geometry put into the functional groups (PS3.3 C.7.6.16).
    emri = pydicom.dcmread(pydicom_file("emri_small_jpeg_ls_lossless.dcm"))
    if "SharedFunctionalGroupsSequence" not in emri:
        emri.SharedFunctionalGroupsSequence = [pydicom.Dataset()]
    if "PerFrameFunctionalGroupsSequence" not in emri:
        emri.PerFrameFunctionalGroupsSequence = [pydicom.Dataset() for _ in range(emri.NumberOfFrames)]
    shared = emri.SharedFunctionalGroupsSequence[0]
    shared.PlaneOrientationSequence = [pydicom.Dataset()]
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PixelMeasuresSequence = [pydicom.Dataset()]
    shared.PixelMeasuresSequence[0].PixelSpacing = [0.9, 0.9]
    shared.PixelMeasuresSequence[0].SliceThickness = 3
    for i, group in enumerate(emri.PerFrameFunctionalGroupsSequence):
        group.PlanePositionSequence = [pydicom.Dataset()]
        group.PlanePositionSequence[0].ImagePositionPatient = [0, 0, 3.0 * i]
    write(target, "enhanced_mr_jpeg_ls.dcm", to_bytes(emri))
    # A three-slice series in one input (files split at the separator).
    series = [to_bytes(small_ct(z=2.0 * i, instance=i + 1)) for i in range(3)]
    write(target, "series_of_three.bin", SEPARATOR.join(series))


# --- seg, sr_read -----------------------------------------------------------------------------

def small_series(folder: Path, count: int = 3) -> list[Path]:
    paths = []
    for i in range(count):
        path = folder / f"ct{i}.dcm"
        small_ct(rows=16, columns=16, z=2.0 * i, instance=i + 1).save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def seg_seeds(work: Path) -> None:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    target = "seg"
    for name in ("liver_1frame.dcm", "liver_expb_1frame.dcm"):
        write(target, name, pydicom_file(name).read_bytes())
    sources = [pydicom.dcmread(p) for p in small_series(work)]
    mask = np.zeros((3, 16, 16), dtype=np.uint8)
    mask[0, 2:6, 3:9] = 1
    mask[1, 4:12, 4:12] = 1
    mask[1, 13:15, 1:3] = 2
    mask[2, 8:10, 8:10] = 2
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n,
            segment_label=label,
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Brain,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for n, label in ((1, "brain"), (2, "lesion"))
    ]
    for name, syntax in (("highdicom_explicit.dcm", ExplicitVRLittleEndian),
                         ("highdicom_implicit.dcm", ImplicitVRLittleEndian)):
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=mask,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid="1.2.3.9",
            series_number=9,
            sop_instance_uid="1.2.3.9.1",
            instance_number=1,
            manufacturer="fuzz",
            manufacturer_model_name="fuzz",
            software_versions="0",
            device_serial_number="0",
            transfer_syntax_uid=syntax,
        )
        out = io.BytesIO()
        seg.save_as(out)
        write(target, name, out.getvalue())


def sr_seeds(work: Path) -> None:
    target = "sr_read"
    for name in ("reportsi.dcm", "test-SR.dcm", "reportsi_with_empty_number_tags.dcm"):
        write(target, name, pydicom_file(name).read_bytes())
    slices = [str(p) for p in small_series(work)]
    script = REPO / "pacs-bridge" / "tests" / "write_label_sr.py"
    for flavour, syntax in (("comprehensive", "explicit"), ("enhanced", "implicit"),
                            ("comprehensive", "deflated")):
        out = work / f"{flavour}-{syntax}.dcm"
        subprocess.run([sys.executable, str(script), str(out), flavour, syntax, *slices],
                       check=True, stdout=subprocess.DEVNULL)
        write(target, f"label_{flavour}_{syntax}.dcm", out.read_bytes())


# --- dataset: the bytes after the file meta group, with an encoding selector -----------------

def dataset_seeds() -> None:
    target = "dataset"
    selector = {ExplicitVRLittleEndian: 0, ImplicitVRLittleEndian: 1, ExplicitVRBigEndian: 2,
                DeflatedExplicitVRLittleEndian: 3}
    for name in ("reportsi.dcm", "nested_priv_SQ.dcm", "priv_SQ.dcm", "UN_sequence.dcm",
                 "MR_small_RLE.dcm", "MR_small_implicit.dcm", "SC_rgb_small_odd_big_endian.dcm",
                 "image_dfl.dcm", "emri_small_jpeg_ls_lossless.dcm"):
        data = pydicom_file(name).read_bytes()
        meta = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta
        syntax = meta.TransferSyntaxUID
        end = 144 + meta.FileMetaInformationGroupLength
        encoding = selector.get(syntax, 0)  # encapsulated syntaxes are explicit VR LE
        write(target, name.replace(".dcm", ".bin"), bytes([encoding]) + data[end:])


# --- pdu, dimse: Upper Layer streams and command sets ----------------------------------------

def element(element_number: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0, element_number, len(value)) + value


def uid(text: str) -> bytes:
    raw = text.encode()
    return raw + b"\0" * (len(raw) % 2)


def us(value: int) -> bytes:
    return struct.pack("<H", value)


def command(*elements: bytes) -> bytes:
    body = b"".join(elements)
    return element(0x0000, struct.pack("<I", len(body))) + body


ECHO_RQ = command(element(0x0002, uid("1.2.840.10008.1.1")), element(0x0100, us(0x0030)),
                  element(0x0110, us(1)), element(0x0800, us(0x0101)))
STORE_RQ = command(element(0x0002, uid("1.2.840.10008.5.1.4.1.1.2")),
                   element(0x0100, us(0x0001)), element(0x0110, us(7)),
                   element(0x0700, us(0)), element(0x0800, us(0)),
                   element(0x1000, uid("1.2.3.4.5.1")))
STORE_RSP = command(element(0x0002, uid("1.2.840.10008.5.1.4.1.1.2")),
                    element(0x0100, us(0x8001)), element(0x0120, us(7)),
                    element(0x0800, us(0x0101)), element(0x0900, us(0xA700)),
                    element(0x0902, b"out of space"), element(0x1000, uid("1.2.3.4.5.1")))
ECHO_RSP = command(element(0x0002, uid("1.2.840.10008.1.1")), element(0x0100, us(0x8030)),
                   element(0x0120, us(1)), element(0x0800, us(0x0101)),
                   element(0x0900, us(0)))


def dimse_seeds() -> None:
    for name, data in (("echo_rq.bin", ECHO_RQ), ("store_rq.bin", STORE_RQ),
                       ("store_rsp.bin", STORE_RSP), ("echo_rsp.bin", ECHO_RSP)):
        write("dimse", name, data)


def pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BBI", pdu_type, 0, len(body)) + body


def item(item_type: int, body: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(body)) + body


def ae(title: str) -> bytes:
    return title.encode().ljust(16)


def associate(pdu_type: int, result: bool = False) -> bytes:
    contexts = b""
    for context_id, abstract in ((1, "1.2.840.10008.1.1"), (3, "1.2.840.10008.5.1.4.1.1.2")):
        if result:
            contexts += item(0x21, bytes([context_id, 0, 0, 0])
                             + item(0x40, b"1.2.840.10008.1.2.1"))
        else:
            contexts += item(0x20, bytes([context_id, 0, 0, 0]) + item(0x30, abstract.encode())
                             + item(0x40, b"1.2.840.10008.1.2.1")
                             + item(0x40, b"1.2.840.10008.1.2"))
    user = item(0x50, item(0x51, struct.pack(">I", 16384))
                + item(0x52, b"1.2.826.0.1.3680043.10.1104.1")
                + item(0x55, b"FUZZ_0"))
    body = (struct.pack(">HH", 1, 0) + ae("RADIANT") + ae("MODALITY") + bytes(32)
            + item(0x10, b"1.2.840.10008.3.1.1.1") + contexts + user)
    return pdu(pdu_type, body)


def pdv(context_id: int, control: int, data: bytes) -> bytes:
    return struct.pack(">I", len(data) + 2) + bytes([context_id, control]) + data


def pdu_seeds() -> None:
    target = "pdu"
    dataset = pydicom_file("MR_small.dcm").read_bytes()[:1500]
    release = pdu(0x05, bytes(4))
    streams = {
        "associate_rq.bin": associate(0x01),
        "associate_ac.bin": associate(0x02, result=True),
        "associate_rj.bin": pdu(0x03, bytes([0, 1, 1, 3])),
        "abort.bin": pdu(0x07, bytes([0, 0, 2, 0])),
        "echo.bin": associate(0x01) + pdu(0x04, pdv(1, 0x03, ECHO_RQ)) + release,
        "store_in_fragments.bin": associate(0x01)
        + pdu(0x04, pdv(3, 0x01, STORE_RQ[:20]) + pdv(3, 0x03, STORE_RQ[20:]))
        + pdu(0x04, pdv(3, 0x00, dataset[:700]) + pdv(3, 0x00, dataset[700:1000]))
        + pdu(0x04, pdv(3, 0x02, dataset[1000:]))
        + release,
        "store_rsp.bin": pdu(0x04, pdv(3, 0x03, STORE_RSP)) + pdu(0x06, bytes(4)),
    }
    for name, data in streams.items():
        write(target, name, data)


# --- manifest -------------------------------------------------------------------------------

def manifest_seeds() -> None:
    reference = (REPO / "models" / "reference" / "head-ct" / "manifest.toml").read_text()
    write("manifest", "head_ct.toml", reference.encode())
    extra = reference + (
        '\n[validation]\nfile = "validation.safetensors"\nsha256 = "'
        + "ab" * 32 + '"\ncases = 12\n\n[report]\nprocedure = { scheme = "LN", value = '
        '"24725-4", meaning = "CT Head" }\n'
    )
    if "[report]" in reference:
        extra = reference + ('\n[validation]\nfile = "validation.safetensors"\nsha256 = "'
                             + "ab" * 32 + '"\ncases = 12\n')
    write("manifest", "with_validation.toml", extra.encode())
    minimal = "\n".join([
        'id = "m"', 'version = "1.0.0"', 'task = "segmentation"', 'licence = "x"',
        'intended_use = "tests"',
        "[input]", 'modality = "CT"', "min_slices = 1", "size = [8, 8]", "spacing_mm = 1.0",
        'channels = [{ name = "w", center = 0.0, width = 1.0 }]', "outside_value = 0.0",
        "[backbone]", 'file = "b.onnx"', f'sha256 = "{"0" * 64}"', 'input = "i"',
        'output = "o"', "features = 1",
        "[head]", 'file = "h.safetensors"', f'sha256 = "{"f" * 64}"', "hidden = 1",
        "[[labels]]", "value = 1", 'name = "l"', "colour = [1, 2, 3]", "",
    ])
    write("manifest", "minimal.toml", minimal.encode())


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        volume_seeds()
        seg_seeds(work)
        sr_seeds(work)
    dataset_seeds()
    dimse_seeds()
    pdu_seeds()
    manifest_seeds()
    total = sum(p.stat().st_size for p in SEEDS.rglob("*") if p.is_file())
    count = sum(1 for p in SEEDS.rglob("*") if p.is_file())
    print(f"{count} seeds, {total} bytes in {SEEDS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
