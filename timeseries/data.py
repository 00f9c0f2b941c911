"""Time-series data for TSDiff: loading (GluonTS, CSV, JSON lines, generated), training windows,
lag features and mean scaling.

A dataset is a list of entries ``{"start": pd.Period, "target": np.ndarray, "item_id": str}``
(GluonTS's format); NaN marks a missing value. ``TimeSeriesData`` holds the training series and
the rolling test entries (each test entry's last ``prediction_length`` values are the truth).
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch

from gencond.errors import UserError
from gencond.files import read_text

from .config import MISSING_SCENARIOS

DATA_DIR_ENV = "GENCOND_DATA_DIR"


def default_lags(freq: str) -> list[int]:
    """TSDiff's lags: hourly 24·[1..6,7,14,21,28]; daily and business 30·[1..12]; else none."""
    base = pd.tseries.frequencies.to_offset(freq).name.upper()
    if base.startswith("H"):
        return [24, 48, 72, 96, 120, 144, 168, 336, 504, 672]
    if base.startswith(("D", "B")):
        return [30 * i for i in range(1, 13)]
    return []


@dataclass
class TimeSeriesData:
    """Training series and rolling test entries of one dataset."""

    name: str
    freq: str
    prediction_length: int
    train: list[dict]
    test: list[dict]

    def __post_init__(self):
        self.freq = canonical_freq(self.freq)

    def validation_entries(self, max_series: int) -> list[dict]:
        """The last ``prediction_length`` values of (up to ``max_series``) training series, as
        evaluation entries for periodic validation."""
        return [e for e in self.train if len(e["target"]) > self.prediction_length][:max_series]


def canonical_freq(freq: str) -> str:
    """pandas' current spelling of a period frequency ('H' -> 'h', 'T' -> 'min'), so that the deprecated
    aliases GluonTS datasets carry do not print a FutureWarning at every period built from them."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return pd.Period("2000-01-03", freq).freqstr
    except (ValueError, TypeError):
        return freq  # not a period frequency: the checks that need one say so


# ---------------------------------------------------------------- loading


def gluonts_search_path(name: str, root: Optional[str]) -> list[Path]:
    """Where a GluonTS dataset is looked up, in order: data.root, $GENCOND_DATA_DIR, GluonTS's cache."""
    from gluonts.dataset.repository.datasets import default_dataset_path

    places = []
    if root:
        places += [Path(root), Path(root) / "gluonts"]
    if os.environ.get(DATA_DIR_ENV):
        places.append(Path(os.environ[DATA_DIR_ENV]) / "gluonts")
    places.append(Path(default_dataset_path))
    return places


def load_gluonts(name: str, root: Optional[str] = None) -> TimeSeriesData:
    """A GluonTS repository dataset from the first place in the search path that has it."""
    from gluonts.dataset.repository import get_dataset
    from gluonts.dataset.repository.datasets import dataset_recipes

    if name not in dataset_recipes:
        raise UserError(f"unknown dataset '{name}': not a GluonTS dataset name, a .csv/.jsonl file, or 'synthetic'")
    places = gluonts_search_path(name, root)
    for place in places:
        if (place / name / "metadata.json").is_file():
            ds = get_dataset(name, path=place)
            return TimeSeriesData(
                name,
                ds.metadata.freq,
                int(ds.metadata.prediction_length),
                [_entry(e, i) for i, e in enumerate(ds.train)],
                [_entry(e, i) for i, e in enumerate(ds.test)],
            )
    looked = ", ".join(str(p / name) for p in places)
    raise UserError(
        f"dataset '{name}' not found (looked in {looked}); on a machine with internet run "
        f"`python -c \"from gluonts.dataset.repository import get_dataset; get_dataset('{name}')\"` "
        f"and copy it there, or set data.root / ${DATA_DIR_ENV}"
    )


def _entry(e: dict, i: int) -> dict:
    """Our entry format; ``series`` names the underlying series (GluonTS test sets give each
    rolling window its own item_id, but keep the series' static category)."""
    cat = e.get("feat_static_cat")
    return {
        "start": e["start"],
        "target": np.asarray(e["target"], dtype=np.float32),
        "item_id": str(e.get("item_id", i)),
        "series": str(int(cat[0])) if cat is not None and len(cat) else str(e.get("item_id", i)),
    }


def split_rolling(series: Sequence[dict], prediction_length: int, num_windows: int) -> tuple[list[dict], list[dict]]:
    """GluonTS-style split: train = each series without its last ``num_windows`` windows; test =
    one entry per window, each ending where that window ends."""
    need = prediction_length * num_windows
    train, test = [], []
    for e in series:
        n = len(e["target"])
        if n <= need:
            raise UserError(
                f"series '{e['item_id']}' has {n} values, too few for {num_windows} test windows of "
                f"prediction length {prediction_length}; lower data.num_test_windows or prediction_length"
            )
        train.append({**e, "target": e["target"][: n - need]})
        for w in range(num_windows):
            test.append({**e, "target": e["target"][: n - need + (w + 1) * prediction_length]})
    return train, test


def read_series_file(path: Path, freq: Optional[str], timestamp_column: Optional[str],
                     coerce_non_numeric: bool = False) -> tuple[list[dict], str]:
    """Series from a CSV (a timestamp column, one column per series) or GluonTS JSON lines."""
    if not path.is_file():
        raise UserError(f"data file not found: {path}")
    freq = canonical_freq(freq) if freq else freq
    if path.suffix.lower() == ".csv":
        return _read_csv(path, freq, timestamp_column, coerce_non_numeric)
    if path.suffix.lower() in (".jsonl", ".json"):
        if freq is None:
            raise UserError(f"{path}: JSON lines carry no frequency; pass data.freq (e.g. H, D, B)")
        _check_freq(path, freq)
        lines = enumerate(read_text(path, "data file", JSONL_FORMAT).splitlines(), start=1)
        entries = [_json_entry(path, number, line, freq) for number, line in lines if line.strip()]
        if not entries:
            raise UserError(f"{path} holds no series (an empty file); expected {JSONL_FORMAT}")
        return entries, freq
    raise UserError(f"{path}: unsupported file type; use .csv (timestamp + one column per series) or .jsonl (GluonTS)")


def _json_entry(path: Path, number: int, line: str, freq: str) -> dict:
    """One entry of a JSON-lines file; errors name the file and the line."""
    where = f"{path} line {number}"
    try:
        e = json.loads(line)
    except json.JSONDecodeError as err:
        raise UserError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(e, dict):
        raise UserError(f"{where}: not a JSON object; each line must be {{\"start\": ..., \"target\": [...]}}")
    for key in ("start", "target"):
        if key not in e:
            raise UserError(f"{where}: entry has no '{key}'; each line must be {{\"start\": ..., \"target\": [...]}}")
    try:
        target = np.array([np.nan if v is None else v for v in e["target"]], dtype=np.float32)
    except (TypeError, ValueError):
        raise UserError(f"{where}: 'target' must be a list of numbers (null for a missing value)") from None
    try:
        start = pd.Period(e["start"], freq)
    except (TypeError, ValueError) as err:
        raise UserError(f"{where}: 'start' {e['start']!r} is not a timestamp at freq '{freq}' ({err})") from None
    return {"start": start, "target": target, "item_id": str(e.get("item_id", number - 1))}


JSONL_FORMAT = 'one JSON object per line, {"start": ..., "target": [...]}'
CSV_FORMAT = "a header line (timestamp, then one column per series) and one row per time step"


def _csv_frame(path: Path) -> pd.DataFrame:
    """A CSV file's table; an empty, binary, header-only or ragged file is a one-line error."""
    import io

    import csv

    text = read_text(path, "data file", CSV_FORMAT)
    rows = csv.reader(io.StringIO(text))
    header = next(rows, None)
    for number, row in enumerate(rows, start=2):
        if row and len(row) != len(header):
            raise UserError(f"{path} line {number}: a ragged row of {len(row)} fields under a header of {len(header)}; "
                            "every row needs a value (or an empty cell) per column")
    try:

        frame = pd.read_csv(io.StringIO(text))
    except pd.errors.EmptyDataError:
        raise UserError(f"{path} is empty; expected {CSV_FORMAT}") from None
    except pd.errors.ParserError as e:  # "Error tokenizing data. C error: Expected 3 fields in line 4, saw 4"
        detail = str(e).split("error: ")[-1].strip().rstrip(".")
        raise UserError(f"{path}: a ragged row ({detail}); every row needs a value (or an empty cell) per column") from None
    if frame.empty or len(frame.columns) < 2:
        raise UserError(f"{path} holds {'no rows' if frame.empty else 'a single column'}; expected {CSV_FORMAT}")
    return frame


def _read_csv(path: Path, freq: Optional[str], timestamp_column: Optional[str],
              coerce_non_numeric: bool) -> tuple[list[dict], str]:
    """A CSV's series. Empty cells, NaN and null are missing values; anything else that is not a
    number, a timestamp column that holds no timestamps, or timestamps off the ``freq`` grid are errors
    naming the cell (line numbers count the header as line 1)."""
    frame = _csv_frame(path)
    col = timestamp_column or frame.columns[0]
    if col not in frame.columns:
        raise UserError(f"{path}: no timestamp column '{col}'; columns are {list(frame.columns)}")
    which = f"column '{col}'" + ("" if timestamp_column else " (data.timestamp_column, default: the first column)")
    fix = "put the timestamps in the first column or name their column with data.timestamp_column=NAME"
    if pd.api.types.is_numeric_dtype(frame[col]):
        raise UserError(f"{path}: {which} holds numbers, not timestamps (e.g. {frame[col].iloc[0]}); {fix}")
    stamps = frame.pop(col)
    index = pd.to_datetime(stamps, errors="coerce")
    if index.isna().any():
        row = int(np.flatnonzero(index.isna())[0])
        raise UserError(f"{path}: {which} line {row + 2}: {stamps.iloc[row]!r} is not a timestamp; {fix}")
    freq = freq or (pd.infer_freq(index) if len(index) > 2 else None)
    if freq is None:
        raise UserError(f"{path}: cannot infer the frequency from the timestamps; pass data.freq (e.g. H, D, B)")
    _check_freq(path, freq)
    _check_regular(path, index, stamps, freq)
    entries = []
    for name in frame.columns:
        values = pd.to_numeric(frame[name], errors="coerce")
        bad = np.flatnonzero(values.isna() & frame[name].notna())
        if len(bad) and not coerce_non_numeric:
            row = int(bad[0])
            raise UserError(
                f"{path}: column '{name}' line {row + 2} ({stamps.iloc[row]}): {frame[name].iloc[row]!r} is not a "
                f"number; fix it, leave the cell empty for a missing value, or pass data.coerce_non_numeric=true "
                f"to read every non-number as missing"
            )
        entries.append({"start": index.iloc[0].to_period(freq), "target": values.to_numpy(np.float32), "item_id": str(name)})
    return entries, freq


def _check_freq(path: Path, freq: str) -> None:
    try:
        pd.Period("2000-01-01", freq)
    except ValueError:
        raise UserError(f"{path}: unknown frequency '{freq}'; pass data.freq as a pandas period alias, e.g. H, D, B, W, M") from None


def _check_regular(path: Path, index: pd.Series, stamps: pd.Series, freq: str) -> None:
    """An error naming the first timestamp that is not one ``freq`` step after the one before it."""
    step = np.flatnonzero(np.diff(index.dt.to_period(freq).array.asi8) != 1)
    if len(step):
        row = int(step[0]) + 1
        raise UserError(
            f"{path}: timestamps are not regular at freq '{freq}': line {row + 2} ({stamps.iloc[row]}) follows "
            f"{stamps.iloc[row - 1]}; add the missing rows with empty cells (missing values), remove "
            f"repeated ones, or set data.freq to the data's frequency"
        )


def synthetic_series(num_series: int = 16, length: int = 24 * 7 * 10, seed: int = 0) -> list[dict]:
    """Hourly series with daily and weekly seasonality, a slow level drift and AR(1) noise.
    Generated, so the demo and tests need no download."""
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    entries = []
    for i in range(num_series):
        level = rng.uniform(5, 50)
        daily = rng.uniform(0.2, 0.6) * np.sin(2 * np.pi * (t / 24 + rng.uniform()))
        weekly = rng.uniform(0.05, 0.3) * np.sin(2 * np.pi * (t / 168 + rng.uniform()))
        noise = np.zeros(length)
        eps = rng.normal(0, 0.08, length)
        for k in range(1, length):
            noise[k] = 0.7 * noise[k - 1] + eps[k]
        drift = 0.1 * np.sin(2 * np.pi * t / length * rng.uniform(0.5, 1.5))
        values = level * np.exp(daily + weekly + noise + drift)
        entries.append({"start": pd.Period("2024-01-01 00:00", "h"), "target": values.astype(np.float32), "item_id": f"synthetic_{i}"})
    return entries


def load_dataset(
    dataset: str,
    *,
    root: Optional[str] = None,
    freq: Optional[str] = None,
    prediction_length: Optional[int] = None,
    num_test_windows: int = 1,
    timestamp_column: Optional[str] = None,
    max_series: Optional[int] = None,
    coerce_non_numeric: bool = False,
) -> TimeSeriesData:
    """Any supported dataset by name or path; ``prediction_length`` must agree with a GluonTS
    dataset's own (its test windows are cut for it)."""
    if dataset == "synthetic":
        pl = prediction_length or 24
        train, test = split_rolling(synthetic_series(), pl, num_test_windows)
        data = TimeSeriesData("synthetic", "h", pl, train, test)
    elif dataset.lower().endswith((".csv", ".jsonl", ".json")):
        if prediction_length is None:
            raise UserError(f"{dataset}: pass data.prediction_length (how many steps to forecast)")
        entries, freq = read_series_file(Path(dataset), freq, timestamp_column, coerce_non_numeric)
        train, test = split_rolling(entries, prediction_length, num_test_windows)
        data = TimeSeriesData(Path(dataset).stem, freq, prediction_length, train, test)
    else:
        data = load_gluonts(dataset, root)
        if prediction_length is not None and prediction_length != data.prediction_length:
            raise UserError(
                f"data.prediction_length={prediction_length} disagrees with dataset '{dataset}' "
                f"(its test windows are {data.prediction_length} long); remove the key or set it to {data.prediction_length}"
            )
    if max_series is not None:
        keep = {series_id(e) for e in data.train[:max_series]}
        data.train = [e for e in data.train if series_id(e) in keep]
        data.test = [e for e in data.test if series_id(e) in keep]
    return data


def series_id(entry: dict) -> str:
    """Which series an entry belongs to (several test windows share one)."""
    return entry.get("series", entry["item_id"])


# ---------------------------------------------------------------- missing-value scenarios



def missing_positions(scenario: str, count: int, context_length: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted context positions (0 = oldest) hidden by a TSDiff missing-value scenario: ``count``
    at random (RM), the first ``count`` (BM-B) or the last ``count`` (BM-E)."""
    if scenario not in MISSING_SCENARIOS:
        raise UserError(f"unknown missing-value scenario '{scenario}'; use one of {', '.join(MISSING_SCENARIOS)}")
    if not 0 < count < context_length:
        raise UserError(f"the number of missing points must be in 1..{context_length - 1} (the context length - 1), got {count}")
    if scenario == "RM":
        return np.sort(rng.choice(context_length, size=count, replace=False))
    return np.arange(count) if scenario == "BM-B" else np.arange(context_length - count, context_length)


def hide_context(past: np.ndarray, scenario: str, count: int, context_length: int, rng: np.random.Generator) -> np.ndarray:
    """A copy of a past series whose last ``context_length`` values lose ``count`` to NaN as
    ``scenario`` says (the context is the end of the past; a shorter past loses what it has there)."""
    past = np.array(past, dtype=np.float32)
    first = len(past) - context_length
    idx = first + missing_positions(scenario, count, context_length, rng)
    past[idx[idx >= 0]] = np.nan
    return past


# ---------------------------------------------------------------- windows and features


class WindowBuilder:
    """Builds TSDiff's model inputs from raw values: mean scaling on the observed context, the
    target as channel 0 and its lags as channels 1..K, and the observed mask of every entry."""

    def __init__(self, context_length: int, prediction_length: int, lags: Sequence[int]):
        self.context_length = context_length
        self.prediction_length = prediction_length
        self.lags = list(lags)
        self.history = max(self.lags, default=0)  # values needed before the window for its lags

    @property
    def channels(self) -> int:
        return 1 + len(self.lags)

    @property
    def length(self) -> int:
        return self.context_length + self.prediction_length

    @property
    def raw_length(self) -> int:
        """How many raw values one window needs: lag history + context + prediction."""
        return self.history + self.length

    def features(self, values: np.ndarray, observed: np.ndarray, scale: Optional[np.ndarray] = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x, mask, scale) from raw windows (B, raw_length): x and mask are (B, L, 1+K), scale (B,).

        The scale (unless given) is the mean |value| over the observed context (1 where nothing is
        observed); the same scale applies to lags and the future. Unobserved entries of x are 0.
        """
        values = np.where(observed > 0, np.nan_to_num(values), 0.0).astype(np.float32)
        observed = observed.astype(np.float32)
        if scale is None:
            ctx = slice(self.history, self.history + self.context_length)
            count = observed[:, ctx].sum(1)
            scale = np.abs(values[:, ctx]).sum(1) / np.maximum(count, 1)
            scale = np.where((count > 0) & (scale > 1e-10), scale, 1.0)
        scale = np.asarray(scale, dtype=np.float32)
        x = self.channels_of(values / scale[:, None])
        mask = self.channels_of(observed)
        return torch.from_numpy(x), torch.from_numpy(mask), torch.from_numpy(scale)

    def channels_of(self, raw: np.ndarray) -> np.ndarray:
        """Raw windows (B, raw_length) -> (B, L, 1+K): the window and its lagged copies."""
        idx = self.history + np.arange(self.length)
        return np.ascontiguousarray(np.stack([raw[:, idx]] + [raw[:, idx - lag] for lag in self.lags], axis=-1))

    def past_window(self, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The raw window of a series whose future is to be forecast: its last history+context values
        (left-padded as unobserved when the series is shorter), the future unobserved."""
        need = self.history + self.context_length
        past = target[-need:]
        pad = need - len(past)
        values = np.concatenate([np.zeros(pad, np.float32), past, np.zeros(self.prediction_length, np.float32)])
        observed = np.concatenate([np.zeros(pad), np.isfinite(past), np.zeros(self.prediction_length)])
        return values, observed


class TrainingWindows:
    """Random training windows: a pure function of the generator it is given."""

    def __init__(self, series: Sequence[dict], builder: WindowBuilder):
        self.builder = builder
        pad = builder.raw_length - builder.prediction_length  # allow windows starting before the series
        pl = builder.prediction_length
        self.values, self.observed, self.first_end = [], [], []
        counts = []
        for e in series:
            t = e["target"]
            n = len(t)
            if n < pl + 1:
                continue
            # a window's context holds min(context_length, n - pl) real values; shorter series are
            # left-padded with unobserved zeros, so they still train
            min_past = min(builder.context_length, n - pl)
            self.values.append(np.concatenate([np.zeros(pad, np.float32), np.nan_to_num(t)]))
            self.observed.append(np.concatenate([np.zeros(pad, np.float32), np.isfinite(t).astype(np.float32)]))
            self.first_end.append(pad + pl + min_past)
            counts.append(n - pl - min_past + 1)
        if not counts:
            raise UserError(f"no training series has more than prediction_length={pl} values")
        self.offsets = np.concatenate([[0], np.cumsum(counts)])
        self.first_end = np.array(self.first_end)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x, mask, scale) of ``batch_size`` windows drawn uniformly over all positions."""
        return self.builder.features(*self.sample_raw(batch_size, generator))

    def sample_raw(self, batch_size: int, generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Raw (values, observed) arrays (B, raw_length) of ``batch_size`` random windows."""
        picks = torch.randint(0, len(self), (batch_size,), generator=generator).numpy()
        series = np.searchsorted(self.offsets, picks, side="right") - 1
        ends = self.first_end[series] + (picks - self.offsets[series])
        raw = self.builder.raw_length
        vals = np.stack([self.values[s][e - raw : e] for s, e in zip(series, ends)])
        obs = np.stack([self.observed[s][e - raw : e] for s, e in zip(series, ends)])
        return vals, obs
