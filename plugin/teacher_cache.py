"""The teacher cache: the teacher's top-k at every token of a recipe's rows, computed once, read by any run.

One teacher pass serves any number of students, and a run that reads the
cache never loads the teacher. Neither Axolotl (whose KD reads log-probs
stored in the dataset as JSON lists, built by the user) nor TRL keeps such a
cache keyed on what produced it, so this module does.

A cache folder (`proofkd_teacher_cache`) holds:

- `manifest.json`: the key (`CacheKey`: the teacher, its dtype and files, the
  tokenizer, the template, the sequence length and k), the log-prob dtype,
  the fingerprint of the rows in build order, and the shards written so far
  with their byte sizes;
- `shard-NNNNN.safetensors`: for each of its rows, keyed by a hash of the
  row's token ids, `ids` int32 and `logps` (float16 or float32) `[n - 1, k]`:
  the teacher's top-k over the token at positions 1..n-1 of the row, given
  what precedes it (the layout of `Teacher.topk_by_position`).

A batch finds its rows by hash, whatever the order and padding. A changed
teacher, tokenizer, template, sequence length or k is refused with what
differs (`CacheKey.differences`); a changed row is missing from the cache and
refused by `CachedTeacher.check_rows` before the first step. A shard is
written beside its final name and renamed when whole, and entered in the
manifest only then: an interrupted build keeps every whole shard and resumes
after them. A shard whose size is not the manifest's is named as cut short.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from proofkd.core.io import atomic_path
from proofkd.core.logs import get_logger
from proofkd.plugin.logprobs import TokenScores
from proofkd.plugin.teacher import (
    Teacher,
    TeacherMismatchError,
    TeacherOutputError,
    TeacherTargets,
    topk_targets,
    unusable_logps,
)

LOG = get_logger(__name__)

MANIFEST = "manifest.json"
FORMAT = 1
LOGPROB_DTYPES = {"float16": torch.float16, "float32": torch.float32}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


class TeacherCacheError(ValueError):
    """A teacher cache that is missing, cut short, or built from other inputs than the run's."""


def row_hash(ids) -> bytes:
    """16 bytes naming a row by its token ids (padding removed)."""
    values = torch.as_tensor(ids, dtype=torch.int64).cpu().numpy()
    return hashlib.blake2b(values.tobytes(), digest_size=16).digest()


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]


def teacher_files(name: str) -> str | None:
    """A local teacher folder's fingerprint (its config and its weight files' names and sizes); None for a Hub id."""
    folder = Path(name).expanduser()
    config = folder / "config.json"
    if not config.is_file():
        return None
    weights = sorted(f"{p.name}:{p.stat().st_size}" for p in folder.iterdir() if p.suffix in _WEIGHT_SUFFIXES)
    return _digest(config.read_text(encoding="utf-8"), *weights)


def tokenizer_fingerprint(tokenizer) -> str:
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return _digest(*(f"{token}\x01{index}" for token, index in vocab))


@dataclass(frozen=True)
class CacheKey:
    """What determines a cache's entries, beside the rows themselves."""

    teacher: str
    teacher_files: str | None
    teacher_dtype: str
    tokenizer: str
    template: str
    sequence_len: int
    topk: int

    @classmethod
    def from_cfg(cls, cfg, tokenizer) -> CacheKey:
        """The key of the cache a Stage-1 recipe needs, with the tokenizer the run loads."""
        served = bool(cfg.get("proofkd_teacher_server"))
        name = (cfg.get("proofkd_teacher_server_model") if served else None) or cfg.get("proofkd_teacher") or ""
        datasets = [d.get("type") for d in (cfg.get("datasets") or []) + (cfg.get("test_datasets") or [])]
        template = _digest(
            str(cfg.get("chat_template")), str(getattr(tokenizer, "chat_template", None)), json.dumps(datasets)
        )
        return cls(
            teacher=name,
            teacher_files=None if served else teacher_files(name),
            teacher_dtype="served" if served else str(cfg.get("proofkd_teacher_dtype") or "auto"),
            tokenizer=tokenizer_fingerprint(tokenizer),
            template=template,
            sequence_len=int(cfg.get("sequence_len") or 0),
            topk=int(cfg.get("proofkd_teacher_topk")),
        )

    def differences(self, run: CacheKey) -> list[str]:
        """What the run (`run`) asks for that this cache was not built with, one line each."""
        lines = []
        for item in fields(self):
            built, asked = getattr(self, item.name), getattr(run, item.name)
            if item.name == "teacher_files" and (built is None or asked is None):
                continue  # the teacher folder is not here (or was a Hub id): its name decides
            if built != asked:
                lines.append(f"{item.name}: the cache has {built!r}, this run {asked!r}")
        return lines


@dataclass
class CacheManifest:
    key: CacheKey
    logprob_dtype: str
    rows: int
    data: str
    shards: list[dict]
    format: int = FORMAT

    @classmethod
    def read(cls, folder: Path) -> CacheManifest | None:
        path = folder / MANIFEST
        if not path.is_file():
            return None
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            return cls(**{**raw, "key": CacheKey(**raw["key"])})
        except (ValueError, TypeError, KeyError) as error:
            raise TeacherCacheError(
                f"{path} is not a teacher cache manifest ({error}); rebuild it with `proofkd teacher cache RECIPE "
                "--overwrite`"
            ) from None

    def write(self, folder: Path) -> None:
        with atomic_path(folder / MANIFEST) as tmp:
            tmp.write_text(json.dumps(asdict(self), indent=1) + "\n", encoding="utf-8")

    @property
    def cached_rows(self) -> int:
        return sum(shard["rows"] for shard in self.shards)

    @property
    def complete(self) -> bool:
        return self.cached_rows == self.rows

    def cut_shards(self, folder: Path) -> list[str]:
        """The shards whose file is missing or not the size the manifest says, one line each."""
        lines = []
        for shard in self.shards:
            if not _is_whole(folder, shard):
                path = folder / shard["file"]
                found = f"{path.stat().st_size} bytes" if path.is_file() else "missing"
                lines.append(f"{path} is {found}, not the {shard['bytes']} bytes it was written with")
        return lines


def _is_whole(folder: Path, shard: dict) -> bool:
    path = folder / shard["file"]
    return path.is_file() and path.stat().st_size == shard["bytes"]


def unique_rows(datasets) -> list[list[int]]:
    """The token ids of every row of `datasets` (train, then eval), each distinct row once, in order."""
    seen, rows = set(), []
    for dataset in datasets:
        if dataset is None:
            continue
        for ids in dataset["input_ids"]:
            digest = row_hash(ids)
            if digest not in seen:
                seen.add(digest)
                rows.append(list(ids))
    return rows


def _data_fingerprint(rows: list[list[int]]) -> str:
    digest = hashlib.sha256()
    for ids in rows:
        digest.update(row_hash(ids))
    return digest.hexdigest()[:16]


def _usable_manifest(folder: Path, key: CacheKey, data: str, rows: int, overwrite: bool) -> CacheManifest | None:
    """The manifest to resume from, or None to start afresh; refuse a folder that holds another cache."""
    manifest = CacheManifest.read(folder) if not overwrite else None
    if manifest is None:
        return None
    differing = manifest.key.differences(key)
    if manifest.data != data:
        differing.append(f"rows: the cache holds {manifest.rows} rows of other data, this run has {rows}")
    if differing:
        raise TeacherCacheError(
            f"{folder} holds a teacher cache built from other inputs:\n- " + "\n- ".join(differing) + "\n"
            "Give another folder, or rebuild this one with --overwrite"
        )
    for index, shard in enumerate(manifest.shards):
        if not _is_whole(folder, shard):
            LOG.warning("teacher cache %s: %s is not whole; rebuilding from it", folder, shard["file"])
            manifest.shards = manifest.shards[:index]
            break
    return manifest


def _clear(folder: Path) -> None:
    for path in folder.glob("shard-*.safetensors"):
        path.unlink()
    (folder / MANIFEST).unlink(missing_ok=True)


def build_cache(
    rows: list[list[int]],
    teacher: Teacher,
    key: CacheKey,
    folder: str | os.PathLike,
    *,
    logprob_dtype: str = "float16",
    rows_per_shard: int = 256,
    rows_per_batch: int = 4,
    overwrite: bool = False,
    progress: bool = True,
) -> CacheManifest:
    """Run `teacher` over `rows` and store its top-`key.topk` at every token in `folder`; resume a cut build.

    Raises `TeacherCacheError` if `folder` holds a cache of other inputs (unless
    `overwrite`), and `TeacherOutputError` naming the row if the teacher gives
    NaN or inf.
    """
    from tqdm.auto import tqdm

    if logprob_dtype not in LOGPROB_DTYPES:
        raise ValueError(f"logprob_dtype must be one of {', '.join(LOGPROB_DTYPES)}, got {logprob_dtype!r}")
    if rows_per_shard < 1 or rows_per_batch < 1:
        raise ValueError("rows_per_shard and rows_per_batch must be at least 1")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = _data_fingerprint(rows)
    manifest = _usable_manifest(folder, key, data, len(rows), overwrite)
    if manifest is None:
        _clear(folder)
        manifest = CacheManifest(key=key, logprob_dtype=logprob_dtype, rows=len(rows), data=data, shards=[])
        manifest.write(folder)
    done = manifest.cached_rows
    if done:
        LOG.info("teacher cache %s: resuming after %d of %d rows", folder, done, len(rows))
        if logprob_dtype != manifest.logprob_dtype:
            LOG.warning("teacher cache %s: its log-probs stay %s, as begun", folder, manifest.logprob_dtype)
    bar = tqdm(total=len(rows), initial=done, unit="row", desc="teacher cache", disable=not progress)
    for start in range(done, len(rows), rows_per_shard):
        chunk, entries = rows[start : start + rows_per_shard], []
        for first in range(0, len(chunk), rows_per_batch):
            batch = chunk[first : first + rows_per_batch]
            entries += _teacher_entries(teacher, batch, key.topk, start + first)
            bar.update(len(batch))
        name = f"shard-{len(manifest.shards):05d}.safetensors"
        size = _write_shard(folder / name, chunk, entries, LOGPROB_DTYPES[manifest.logprob_dtype])
        manifest.shards.append({"file": name, "rows": len(chunk), "bytes": size})
        manifest.write(folder)
    bar.close()
    return manifest


def _teacher_entries(teacher: Teacher, rows: list[list[int]], k: int, first_row: int) -> list[tuple]:
    """`(ids [n - 1, k], logps [n - 1, k])` per row, from one right-padded batch through the teacher."""
    length = max(len(ids) for ids in rows)
    input_ids = torch.zeros(len(rows), length, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for b, ids in enumerate(rows):
        input_ids[b, : len(ids)] = torch.as_tensor(ids)
        mask[b, : len(ids)] = 1
    top_ids, top_logps = teacher.topk_by_position(input_ids, mask, k)
    entries = []
    for b, ids in enumerate(rows):
        logps = top_logps[b, 1 : len(ids)]
        bad = unusable_logps(logps)
        if bool(bad.any()):
            position = int(bad.any(-1).nonzero()[0, 0]) + 1
            raise TeacherOutputError(
                f"the teacher's output is NaN or inf at row {first_row + b} (counting train rows, then eval), "
                f"position {position}; nothing of it is cached. A teacher in float16 can overflow: set "
                "proofkd_teacher_dtype: bfloat16 or float32"
            )
        entries.append((top_ids[b, 1 : len(ids)].cpu(), logps.cpu()))
    return entries


def _write_shard(path: Path, rows: list[list[int]], entries: list[tuple], dtype: torch.dtype) -> int:
    offsets = torch.tensor([0] + [len(ids) - 1 for ids in rows]).cumsum(0)
    tensors = {
        "ids": torch.cat([ids for ids, _ in entries]).to(torch.int32).contiguous(),
        "logps": torch.cat([logps for _, logps in entries]).to(dtype).contiguous(),
        "offsets": offsets,
        "row_hashes": torch.tensor([list(row_hash(ids)) for ids in rows], dtype=torch.uint8),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))
        tmp.chmod(0o666 & ~_umask())  # readable as any file the user writes: caches are shared between runs
    return path.stat().st_size


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class CachedTeacher(Teacher):
    """The teacher's top-k read from a cache built by `build_cache`: no model, no server."""

    def __init__(self, folder: Path, manifest: CacheManifest):
        self.folder = folder
        self.manifest = manifest
        self.topk = manifest.key.topk
        self._files = [safe_open(str(folder / s["file"]), framework="pt") for s in manifest.shards]
        self._where: dict[bytes, tuple[int, int, int]] = {}
        for index, handle in enumerate(self._files):
            offsets = handle.get_tensor("offsets").tolist()
            for row, digest in enumerate(handle.get_tensor("row_hashes").numpy()):
                self._where[bytes(digest)] = (index, offsets[row], offsets[row + 1])

    @classmethod
    def open(cls, folder: str | os.PathLike, key: CacheKey) -> CachedTeacher:
        """The cache at `folder`, if it is whole and was built for `key`; else `TeacherCacheError` saying why."""
        folder = Path(folder)
        manifest = check_cache(folder, key)
        try:
            return cls(folder, manifest)
        except Exception as error:  # safetensors' own errors on a damaged file
            raise TeacherCacheError(
                f"teacher cache {folder}: a shard cannot be read ({error}); rebuild it with `proofkd teacher cache "
                "RECIPE --overwrite`"
            ) from None

    @property
    def vocab_rows(self) -> None:
        return None

    def describe(self) -> str:
        return f"teacher read from the cache {self.folder} (top-{self.topk}, {self.manifest.rows} rows)"

    def check_rows(self, datasets: dict) -> None:
        """Refuse, before the first step, a run whose rows are not all in the cache (its data changed)."""
        for name, dataset in datasets.items():
            if dataset is None:
                continue
            rows = dataset["input_ids"]
            missing = sum(row_hash(ids) not in self._where for ids in rows)
            if missing:
                raise TeacherCacheError(
                    f"{missing} of the {len(rows)} {name} rows are not in the teacher cache {self.folder} "
                    f"(built over {self.manifest.rows} rows): the data, its template or sequence_len changed "
                    "since. Rebuild it with `proofkd teacher cache RECIPE`"
                )

    def topk_by_position(self, input_ids, attention_mask, topk):
        if topk != self.topk:
            raise TeacherCacheError(f"teacher cache {self.folder} holds the top-{self.topk}, not the top-{topk}")
        batch, length = input_ids.shape
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        top_ids = torch.zeros(batch, length, topk, dtype=torch.long)
        top_logps = torch.full((batch, length, topk), -torch.inf)
        for b, (ids, real) in enumerate(zip(input_ids.cpu(), mask.cpu().bool(), strict=True)):
            where = real.nonzero().squeeze(1)
            found = self._where.get(row_hash(ids[where]))
            if found is None:
                raise TeacherCacheError(
                    f"row {b} of the batch ({len(where)} tokens) is not in the teacher cache {self.folder}; "
                    "rebuild it with `proofkd teacher cache RECIPE`"
                )
            shard, start, end = found
            top_ids[b, where[1:]] = self._files[shard].get_slice("ids")[start:end].long()
            top_logps[b, where[1:]] = self._files[shard].get_slice("logps")[start:end].float()
        return top_ids.to(input_ids.device), top_logps.to(input_ids.device)

    def targets(self, input_ids, attention_mask) -> TeacherTargets:
        return topk_targets(*self.topk_by_position(input_ids, attention_mask, self.topk))

    def score(self, input_ids, attention_mask, completion_len, topk=0) -> TokenScores:
        raise TeacherMismatchError(
            "a teacher cache holds the teacher's view of the recipe's own rows; on-policy distillation scores "
            "the student's new samples and needs the live teacher (proofkd_teacher or proofkd_teacher_server)"
        )


def check_cache(folder: Path, key: CacheKey) -> CacheManifest:
    """The manifest of a whole cache at `folder` built for `key`; else `TeacherCacheError` naming what is wrong."""
    manifest = CacheManifest.read(folder)
    rebuild = "run `proofkd teacher cache RECIPE` (with the recipe this run uses)"
    if manifest is None:
        raise TeacherCacheError(f"proofkd_teacher_cache: {folder} holds no teacher cache ({MANIFEST}); {rebuild}")
    differing = manifest.key.differences(key)
    if differing:
        raise TeacherCacheError(
            f"proofkd_teacher_cache: {folder} was built for other inputs than this run's:\n- "
            + "\n- ".join(differing)
            + f"\nRebuild it ({rebuild} --overwrite), or point proofkd_teacher_cache at a cache built for them"
        )
    cut = manifest.cut_shards(folder)
    if cut:
        raise TeacherCacheError(
            f"proofkd_teacher_cache: {cut[0]}: the file was cut short or replaced; {rebuild} to rebuild "
            "the shards that are not whole"
        )
    if not manifest.complete:
        raise TeacherCacheError(
            f"proofkd_teacher_cache: {folder} holds {manifest.cached_rows} of its {manifest.rows} rows (its build "
            f"was interrupted); {rebuild} to finish it"
        )
    return manifest


def cache_recipe(
    recipe: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    device: str | None = None,
    **options,
) -> tuple[Path, CacheManifest]:
    """`proofkd teacher cache RECIPE`: the recipe's teacher over its prepared train and eval rows, into its cache.

    The rows are Axolotl's own (its config loading and dataset preparation, as
    `axolotl train` runs them); the teacher is the recipe's server if it names
    one, else the model in process on `device` (default: CUDA if there is one).
    `options` go to `build_cache`.
    """
    from axolotl.cli.config import load_cfg
    from axolotl.common.datasets import load_datasets
    from axolotl.loaders import load_tokenizer

    from proofkd.core.recipes import read_recipe

    path, raw = read_recipe(recipe)
    folder = out or raw.get("proofkd_teacher_cache")
    if not folder:
        raise TeacherCacheError(f"{path} sets no proofkd_teacher_cache: give the cache's folder with --out, or set it")
    if raw.get("proofkd_kd_coef") == 0:
        raise TeacherCacheError(f"{path} sets proofkd_kd_coef: 0, so its runs read no teacher: nothing to cache")
    cfg = load_cfg(str(path))
    tokenizer = load_tokenizer(cfg)
    key = CacheKey.from_cfg(cfg, tokenizer)
    teacher = _live_teacher(cfg, tokenizer, device)
    meta = load_datasets(cfg=cfg)
    rows = unique_rows([meta.train_dataset, meta.eval_dataset])
    LOG.info("teacher cache %s: %s over %d rows, top-%d", folder, teacher.describe(), len(rows), key.topk)
    return Path(folder), build_cache(rows, teacher, key, folder, **options)


def _live_teacher(cfg, tokenizer, device: str | None) -> Teacher:
    """The recipe's teacher as training would load it without the cache (`load_teacher`), on `device`."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType
    from axolotl.utils.dict import DictDefault

    from proofkd.plugin.args import teacher_path_problems
    from proofkd.plugin.teacher import check_teacher_tokenizer, load_teacher

    live = DictDefault({**cfg, "proofkd_teacher_cache": None})
    if not live.proofkd_teacher_server:
        problems = teacher_path_problems(str(live.proofkd_teacher))
        if problems:
            raise TeacherCacheError(problems[0])
        check_teacher_tokenizer(live, tokenizer)
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    one_process = SimpleNamespace(num_processes=1, distributed_type=DistributedType.NO)
    return load_teacher(live, one_process, target)
