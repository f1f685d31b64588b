"""Readers for MovieLens 100K, 1M, latest(-small) and a generic ``interactions.csv``.

Every reader returns a :class:`~ingest.tables.Dataset`. Structural problems (an
empty file, a missing column, a wrong delimiter) raise :class:`InputDataError`
naming the file and line. Row-level problems (a non-numeric rating or timestamp, a
row with the wrong number of fields, an exact duplicate) drop that row and count it
in the :class:`DropReport`; too many malformed rows raise, because the file is then
probably being misread.
"""
from __future__ import annotations

import csv
import math
import os
import re
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ingest.report import DropReport, InputDataError
from ingest.tables import (UNKNOWN, UNKNOWN_INT, ColumnBuffer, Dataset, IdCodes,
                           Interactions, ItemFeatures, UserFeatures)

_DELIMITER_NAMES = {"\t": "TAB", ",": "comma", "|": "'|'", "::": "'::'", ";": "';'"}
_YEAR_IN_TITLE = re.compile(r"\((\d{4})\)\s*$")

# MovieLens 1M codes occupations as integers (see its README).
ML1M_OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer",
    "homemaker", "K-12 student", "lawyer", "programmer", "retired", "sales/marketing",
    "scientist", "self-employed", "technician/engineer", "tradesman/craftsman",
    "unemployed", "writer")

FORMATS = {
    "ml-100k": "u.data",
    "ml-1m": "ratings.dat",
    "ml-latest": "ratings.csv",
    "generic": "interactions.csv",
}


def detect_format(data_dir: str) -> str:
    """Names the layout of ``data_dir`` from the interaction file it holds."""
    for fmt, marker in FORMATS.items():
        if os.path.isfile(os.path.join(data_dir, marker)):
            return fmt
    raise InputDataError(
        f"{data_dir}: no known data layout; expected one of "
        + ", ".join(f"{m} ({f})" for f, m in FORMATS.items()))


def read_dataset(data_dir: str, report: DropReport, fmt: Optional[str] = None,
                 log: Optional[Callable[[str], None]] = None) -> Dataset:
    """Reads ``data_dir`` in its detected (or the given) format.

    ``log``, if given, receives a progress line every ``PROGRESS_ROWS`` rows.
    """
    fmt = fmt or detect_format(data_dir)
    reader = {"ml-100k": read_ml100k, "ml-1m": read_ml1m, "ml-latest": read_ml_latest,
              "generic": read_generic}.get(fmt)
    if reader is None:
        raise ValueError(f"unknown format {fmt!r}; known: {sorted(FORMATS)}")
    return reader(data_dir, report, log=log)


# --------------------------------------------------------------------------- lines

def _split_lines(path: str, delimiter: str, encoding: str
                 ) -> Iterator[Tuple[int, List[str], str]]:
    """Yields ``(line_number, fields, raw_line)``; quoted CSV for one-char delimiters."""
    with open(path, newline="", encoding=encoding) as f:
        if len(delimiter) == 1 and delimiter != "|":
            reader = csv.reader(f, delimiter=delimiter)
            for fields in reader:
                yield reader.line_num, fields, delimiter.join(fields)
        else:  # MovieLens '|' and '::' files are never quoted.
            for n, line in enumerate(f, start=1):
                line = line.rstrip("\r\n")
                yield n, (line.split(delimiter) if line else []), line


def _wrong_delimiter(path: str, line_no: int, raw: str, delimiter: str, expected: str
                     ) -> InputDataError:
    seen = [name for d, name in _DELIMITER_NAMES.items() if d != delimiter and d in raw]
    hint = f"; the line looks {seen[0]}-separated" if seen else ""
    return InputDataError(
        f"{path} line {line_no}: expected {_DELIMITER_NAMES[delimiter]}-separated fields "
        f"({expected}), found {len(raw.split(delimiter)) if raw else 0}{hint}")


def _parse_number(text: str, kind: type) -> Optional[float]:
    try:
        value = float(text)
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    if kind is int:
        return int(value) if value == int(value) else None
    return value


PROGRESS_ROWS = 1_000_000


def _read_interactions(path: str, delimiter: str, columns: Dict[str, int], num_fields: int,
                       report: DropReport, encoding: str = "utf-8",
                       header: bool = False,
                       log: Optional[Callable[[str], None]] = None) -> Interactions:
    """Parses one interaction file; ``columns`` maps user/item/rating/timestamp to fields."""
    if not os.path.isfile(path):
        raise InputDataError(f"{path}: file not found")
    if os.path.getsize(path) == 0:
        raise InputDataError(f"{path}: file is empty")
    fast = _read_clean_interactions(path, delimiter, columns, num_fields, encoding, header)
    if fast is not None:
        report.rows_read += len(fast)
        if log:
            log(f"[ingest] read {len(fast):,} rows of {os.path.basename(path)} (vectorized)")
        return drop_duplicates(fast, path, report)
    expected = ", ".join(sorted(columns, key=columns.get))
    users, items, buf = IdCodes(), IdCodes(), ColumnBuffer()
    ui, ii, ri, ti = (columns["user_id"], columns["item_id"], columns.get("rating"),
                      columns["timestamp"])
    first = True
    for line_no, fields, raw in _split_lines(path, delimiter, encoding):
        if header and line_no == 1:
            continue
        if not fields or (len(fields) == 1 and not fields[0].strip()):
            report.drop("blank line", f"{path} line {line_no}")
            continue
        report.rows_read += 1
        if log and report.rows_read % PROGRESS_ROWS == 0:
            log(f"[ingest] read {report.rows_read:,} rows of {os.path.basename(path)}")
        if len(fields) != num_fields:
            if first:  # The very first row decides whether the file is readable at all.
                raise _wrong_delimiter(path, line_no, raw, delimiter, expected)
            report.drop("wrong field count", f"{path} line {line_no}",
                        f"{len(fields)} fields, expected {num_fields}")
            continue
        first = False
        user, item = fields[ui].strip(), fields[ii].strip()
        if not user or not item:
            report.drop("missing id", f"{path} line {line_no}", "empty user or item id")
            continue
        rating = 1.0 if ri is None else _parse_number(fields[ri], float)
        if rating is None:
            report.drop("non-numeric rating", f"{path} line {line_no}", repr(fields[ri]))
            continue
        ts = _parse_number(fields[ti], int)
        if ts is None:
            report.drop("non-numeric timestamp", f"{path} line {line_no}", repr(fields[ti]))
            continue
        buf.append(users.code(user), items.code(item), rating, ts)
    if report.rows_read == 0:
        raise InputDataError(f"{path}: no data rows" + (" after the header" if header else ""))
    report.check_bad_fraction(path)
    return drop_duplicates(buf.finish(users, items), path, report)


def _read_clean_interactions(path: str, delimiter: str, columns: Dict[str, int],
                             num_fields: int, encoding: str, header: bool
                             ) -> Optional[Interactions]:
    """The fast path: the whole file through Arrow's CSV reader, if it is clean.

    Returns None, and the caller falls back to the row-by-row reader (which drops
    and counts bad rows, or raises naming the line), as soon as anything is off: a
    row with the wrong number of fields, a blank line, a non-numeric, empty or
    non-finite rating or timestamp, an empty or space-padded ID, a non-UTF-8 byte.
    A clean file gives exactly what the row-by-row reader gives (IDs are coded in
    order of first appearance), at a fraction of the time.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    from pyarrow import csv as pacsv
    if len(delimiter) != 1 or delimiter == "|" or encoding.lower().replace("-", "") != "utf8":
        return None
    names = [f"f{i}" for i in range(num_fields)]
    ui, ii, ri, ti = (columns["user_id"], columns["item_id"], columns.get("rating"),
                      columns["timestamp"])
    types = {names[ui]: pa.string(), names[ii]: pa.string(), names[ti]: pa.int64()}
    if ri is not None:
        types[names[ri]] = pa.float64()
    try:
        table = pacsv.read_csv(
            path, read_options=pacsv.ReadOptions(column_names=names, skip_rows=int(header),
                                                 block_size=1 << 24),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, ignore_empty_lines=False,
                                             newlines_in_values=False),
            convert_options=pacsv.ConvertOptions(column_types=types,
                                                 include_columns=list(types),
                                                 strings_can_be_null=False,
                                                 quoted_strings_can_be_null=False))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, UnicodeDecodeError):
        return None
    if table.num_rows == 0 or any(table[c].null_count for c in types):
        return None
    user, item, ts = table[names[ui]], table[names[ii]], table[names[ti]]
    for ids in (user, item):
        if pc.any(pc.equal(pc.utf8_length(ids), 0)).as_py() or \
                pc.any(pc.not_equal(pc.utf8_trim_whitespace(ids), ids)).as_py():
            return None
    if ri is None:
        rating = np.ones(table.num_rows, np.float32)
    else:
        values = table[names[ri]].to_numpy()
        if not np.isfinite(values).all():
            return None
        rating = values.astype(np.float32)
    user_ids, item_ids = pc.unique(user), pc.unique(item)  # first-appearance order
    return Interactions(
        pc.index_in(user, value_set=user_ids).to_numpy().astype(np.int32),
        pc.index_in(item, value_set=item_ids).to_numpy().astype(np.int32),
        rating, ts.to_numpy().astype(np.int64), user_ids.to_pylist(), item_ids.to_pylist())


def drop_duplicates(data: Interactions, path: str, report: DropReport) -> Interactions:
    """Drops exact repeats of (user, item, timestamp), keeping the first occurrence."""
    if len(data) == 0:
        return data
    key = data.user.astype(np.int64) * (len(data.item_ids) + 1) + data.item
    order = np.lexsort((np.arange(len(data)), data.timestamp, key))
    k, t = key[order], data.timestamp[order]
    repeat = np.zeros(len(data), dtype=bool)
    repeat[1:] = (k[1:] == k[:-1]) & (t[1:] == t[:-1])
    dup_rows = np.sort(order[repeat])
    for r in dup_rows:
        report.drop("duplicate", path, f"user {data.user_ids[data.user[r]]} item "
                    f"{data.item_ids[data.item[r]]} at timestamp {data.timestamp[r]} repeated")
    if len(dup_rows) == 0:
        return data
    keep = np.ones(len(data), dtype=bool)
    keep[dup_rows] = False
    return data.take(np.flatnonzero(keep))


def _read_feature_file(path: str, delimiter: str, num_fields: int, report: DropReport,
                       parse: Callable[[List[str]], Tuple[str, object]],
                       encoding: str = "utf-8", header: bool = False) -> Dict[str, object]:
    """Reads a side-feature file into ``{id: features}``; bad rows are dropped and counted."""
    table: Dict[str, object] = {}
    if not os.path.isfile(path):
        report.notes.append(f"{path}: not present, so these features are 'unknown'")
        return table
    name = os.path.basename(path)
    for line_no, fields, raw in _split_lines(path, delimiter, encoding):
        if header and line_no == 1:
            continue
        if not fields or not raw.strip():
            continue
        if len(fields) != num_fields:
            if not table:
                raise _wrong_delimiter(path, line_no, raw, delimiter, f"{num_fields} fields")
            report.drop(f"{name}: wrong field count", f"{path} line {line_no}")
            continue
        try:
            key, value = parse(fields)
        except ValueError as e:
            report.drop(f"{name}: bad value", f"{path} line {line_no}", str(e))
            continue
        table[key] = value
    return table


def _int_or_unknown(text: str, field: str) -> int:
    text = text.strip()
    if not text:
        return UNKNOWN_INT
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{field} {text!r} is not an integer") from None


def _year_from_title(title: str) -> int:
    m = _YEAR_IN_TITLE.search(title.strip())
    return int(m.group(1)) if m else UNKNOWN_INT


def _category(text: str) -> str:
    return text.strip() or UNKNOWN


# ------------------------------------------------------------------ MovieLens 100K

def read_ml100k(data_dir: str, report: DropReport,
                log: Optional[Callable[[str], None]] = None) -> Dataset:
    path = os.path.join(data_dir, "u.data")
    inter = _read_interactions(path, "\t", {"user_id": 0, "item_id": 1, "rating": 2,
                                            "timestamp": 3}, 4, report, log=log)

    def user(f: List[str]) -> Tuple[str, UserFeatures]:
        return f[0].strip(), UserFeatures(_int_or_unknown(f[1], "age"), _category(f[2]),
                                          _category(f[3]))

    users = _read_feature_file(os.path.join(data_dir, "u.user"), "|", 5, report, user)
    genre_names = _ml100k_genres(os.path.join(data_dir, "u.genre"))

    def item(f: List[str]) -> Tuple[str, ItemFeatures]:
        flags = f[5:]
        genres = tuple(g for g, flag in zip(genre_names, flags) if flag.strip() == "1")
        # Release date is "01-Jan-1995"; fall back to the "(1995)" in the title.
        date = f[2].strip()
        year = int(date[-4:]) if len(date) >= 4 and date[-4:].isdigit() else \
            _year_from_title(f[1])
        return f[0].strip(), ItemFeatures(genres, year)

    items = _read_feature_file(os.path.join(data_dir, "u.item"), "|", 5 + len(genre_names),
                               report, item, encoding="latin-1")
    return Dataset("ml-100k", inter, users, items)


def _ml100k_genres(path: str) -> List[str]:
    if not os.path.isfile(path):  # The 19 genres of the original release, in order.
        return ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy",
                "Crime", "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror",
                "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]
    pairs = []
    with open(path, encoding="latin-1") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            name, _, index = line.strip().rpartition("|")
            if not index.isdigit():
                raise InputDataError(f"{path} line {line_no}: expected 'genre|index'")
            pairs.append((int(index), name))
    return [name for _, name in sorted(pairs)]


# -------------------------------------------------------------------- MovieLens 1M

def read_ml1m(data_dir: str, report: DropReport,
              log: Optional[Callable[[str], None]] = None) -> Dataset:
    path = os.path.join(data_dir, "ratings.dat")
    inter = _read_interactions(path, "::", {"user_id": 0, "item_id": 1, "rating": 2,
                                            "timestamp": 3}, 4, report, encoding="latin-1",
                               log=log)

    def user(f: List[str]) -> Tuple[str, UserFeatures]:
        occ = f[3].strip()
        occupation = ML1M_OCCUPATIONS[int(occ)] if occ.isdigit() and int(occ) < len(
            ML1M_OCCUPATIONS) else _category(occ)
        # Ages are coded as the lower bound of their group (1, 18, 25, ...).
        return f[0].strip(), UserFeatures(_int_or_unknown(f[2], "age"), _category(f[1]),
                                          occupation)

    def item(f: List[str]) -> Tuple[str, ItemFeatures]:
        genres = tuple(g for g in f[2].strip().split("|") if g)
        return f[0].strip(), ItemFeatures(genres, _year_from_title(f[1]))

    users = _read_feature_file(os.path.join(data_dir, "users.dat"), "::", 5, report, user,
                               encoding="latin-1")
    items = _read_feature_file(os.path.join(data_dir, "movies.dat"), "::", 3, report, item,
                               encoding="latin-1")
    return Dataset("ml-1m", inter, users, items)


# ---------------------------------------------------------------- MovieLens latest

def read_ml_latest(data_dir: str, report: DropReport,
                   log: Optional[Callable[[str], None]] = None) -> Dataset:
    path = os.path.join(data_dir, "ratings.csv")
    cols = _header_columns(path, ",", ("userId", "movieId", "rating", "timestamp"), ())
    inter = _read_interactions(
        path, ",", {"user_id": cols["userId"], "item_id": cols["movieId"],
                    "rating": cols["rating"], "timestamp": cols["timestamp"]},
        len(cols), report, header=True, log=log)

    def item(f: List[str]) -> Tuple[str, ItemFeatures]:
        genres = tuple(g for g in f[2].split("|") if g and g != "(no genres listed)")
        return f[0].strip(), ItemFeatures(genres, _year_from_title(f[1]))

    items = _read_feature_file(os.path.join(data_dir, "movies.csv"), ",", 3, report, item,
                               header=True)
    report.notes.append("MovieLens latest has no user demographics")
    return Dataset("ml-latest", inter, {}, items)


# ------------------------------------------------------------------------ generic

GENERIC_REQUIRED = ("user_id", "item_id", "timestamp")


def read_generic(data_dir: str, report: DropReport,
                 log: Optional[Callable[[str], None]] = None) -> Dataset:
    """Reads ``interactions.csv`` (``user_id,item_id[,rating],timestamp`` with a header).

    Optional side files: ``users.csv`` with ``user_id`` and any of ``age``, ``gender``,
    ``occupation``; ``items.csv`` with ``item_id`` and any of ``genres`` ('|'-separated)
    and ``year``.
    """
    path = os.path.join(data_dir, "interactions.csv")
    cols = _header_columns(path, ",", GENERIC_REQUIRED, ("rating",))
    inter = _read_interactions(path, ",", {k: cols[k] for k in (*GENERIC_REQUIRED, "rating")
                                           if k in cols}, len(cols), report, header=True,
                               log=log)
    users_path = os.path.join(data_dir, "users.csv")
    users: Dict[str, object] = {}
    if os.path.isfile(users_path):
        uc = _header_columns(users_path, ",", ("user_id",), ("age", "gender", "occupation"))

        def user(f: List[str]) -> Tuple[str, UserFeatures]:
            return f[uc["user_id"]].strip(), UserFeatures(
                _int_or_unknown(f[uc["age"]], "age") if "age" in uc else UNKNOWN_INT,
                _category(f[uc["gender"]]) if "gender" in uc else UNKNOWN,
                _category(f[uc["occupation"]]) if "occupation" in uc else UNKNOWN)

        users = _read_feature_file(users_path, ",", len(uc), report, user, header=True)
    items_path = os.path.join(data_dir, "items.csv")
    items: Dict[str, object] = {}
    if os.path.isfile(items_path):
        ic = _header_columns(items_path, ",", ("item_id",), ("genres", "year"))

        def item(f: List[str]) -> Tuple[str, ItemFeatures]:
            genres = tuple(g.strip() for g in f[ic["genres"]].split("|") if g.strip()) \
                if "genres" in ic else ()
            year = _int_or_unknown(f[ic["year"]], "year") if "year" in ic else UNKNOWN_INT
            return f[ic["item_id"]].strip(), ItemFeatures(genres, year)

        items = _read_feature_file(items_path, ",", len(ic), report, item, header=True)
    return Dataset("generic", inter, users, items)


def _header_columns(path: str, delimiter: str, required: Sequence[str],
                    optional: Sequence[str]) -> Dict[str, int]:
    """Maps header names to field positions; raises if a required column is missing."""
    if not os.path.isfile(path):
        raise InputDataError(f"{path}: file not found")
    with open(path, newline="", encoding="utf-8") as f:
        header = next(csv.reader(f, delimiter=delimiter), None)
    if not header:
        raise InputDataError(f"{path}: file is empty")
    names = [h.strip() for h in header]
    missing = [c for c in required if c not in names]
    if missing:
        raw = delimiter.join(header)
        if len(names) == 1:
            raise _wrong_delimiter(path, 1, raw, delimiter, ", ".join(required))
        raise InputDataError(f"{path} line 1: header lacks required column(s) "
                             f"{', '.join(missing)}; found: {', '.join(names)}")
    cols = {n: i for i, n in enumerate(names)}
    known = set(required) | set(optional)
    # Unknown columns stay in the count (rows must have them) but are not read.
    return {**{n: i for n, i in cols.items() if n not in known},
            **{n: cols[n] for n in known if n in cols}}
