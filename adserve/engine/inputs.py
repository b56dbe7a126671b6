"""A request's arrays on their way to a plan: the plain path, and the int64 inputs' range check.

`plain` takes a dict of ndarrays that already fits (float64, the right shapes) as it is, without `evaluation`'s
wording checks. int64 inputs travel to the plans as float64 values, so each must hold integers a float64
represents exactly (|v| <= 2**53): `check_ints` says which one does not. On the plain path the integer arrays
are converted and checked together (`joined`): one conversion into one buffer and one pass for its range,
where GradBench's det, with 22 index tables, paid a conversion per table and a check per table (0.09 ms a call).
"""

from __future__ import annotations

from operator import attrgetter

import numpy as np

from .backend.interpreter import Ready
from .errors import EvaluationError

_F64 = np.dtype(np.float64)
_I64 = np.dtype(np.int64)
_NDARRAY = {np.ndarray}
_SHAPE, _DTYPE = attrgetter("shape"), attrgetter("dtype")
_MAX_EXACT = float(2 ** 53)  # int64 inputs travel as float64 values: exact up to here
_MAX_EXACT_INT = 2 ** 53
_SQUARED = float(2 ** 106)  # _MAX_EXACT squared


def plain(fn, values, names, batch):
    """(batched float64 arrays for `names`, batch size or None, whether every int64 input among them is checked)
    when `values` plainly fits: a dict of exactly these names holding float64 ndarrays of the right shapes (an
    int64 input's may be an integer array: converted, and checked with the others in `joined`). None otherwise:
    `evaluation._check` decides (and words errors)."""
    if type(values) is not dict or len(values) != len(names):
        return None
    if not batch and names is fn.input_names:
        usual = _usual(fn, values)
        if usual is not None:
            return usual, None, True
    shapes, ints, out, B = fn.input_shapes, fn.int_inputs, [], None
    wide = None  # positions in `out` of integer arrays, still as sent
    for n in names:
        a = values.get(n)
        if type(a) is not np.ndarray:
            return None
        if batch:
            if not a.ndim or a.shape[1:] != shapes[n] or (B is not None and a.shape[0] != B):
                return None
            B = a.shape[0]
        elif a.shape != shapes[n]:
            return None
        dtype = a.dtype
        if dtype is _F64 or dtype == _F64:
            out.append(a if batch else a[None])
        elif dtype.kind in "iu" and n in ints:
            if wide is None:
                wide = []
            wide.append(len(out))
            out.append(a)  # converted below, with the others
        else:
            return None
    checked = False
    if wide:
        sent = [out[i] for i in wide]
        floats = joined(sent, batch, _record(fn) if not batch and len(wide) == len(ints) else None)
        checked = floats is not None and len(wide) == len(ints)  # (for the inputs: every int64 one was joined)
        if floats is None:
            floats = [a.astype(_F64) if batch else a[None].astype(_F64) for a in sent]
        for i, f in zip(wide, floats):
            out[i] = f
    return out, B, checked


def _usual(fn, values):
    """The inputs as a `Ready` list when they are the usual ones without batch: C-ordered, aligned float64 arrays
    of their inputs' shapes, int64 arrays for the int64 inputs, all in range; else None (`plain` looks at each).
    The comparisons are of whole lists against the function's own, made once (`_usual_form`): a call of det's
    24 inputs does not go through each in Python."""
    form = fn._usual_form
    if form is None:
        form = fn._usual_form = _usual_form(fn)
    names, shapes, dtypes, floats, ints, order = form
    try:
        arrays = [values[n] for n in names]
    except KeyError:
        return None
    if (set(map(type, arrays)) != _NDARRAY or list(map(_SHAPE, arrays)) != shapes
            or list(map(_DTYPE, arrays)) != dtypes):
        return None
    out = []
    for i in floats:
        a = arrays[i]
        flags = a.flags
        if not (flags.c_contiguous and flags.aligned):
            return None
        out.append(a[None])
    if ints:
        views = joined([arrays[i] for i in ints], False, _record(fn))
        if views is None:
            return None
        out += views
        out = map(out.__getitem__, order)
    ready = Ready(out)
    ready.points = 1
    return ready


def _usual_form(fn):
    """What `_usual` compares a call's inputs with: names, shapes and dtypes in input order; the positions of the
    float64 inputs and of the int64 ones; where each input is in floats + ints."""
    names = fn.input_names
    ints = [i for i, n in enumerate(names) if n in fn.int_inputs]
    floats = [i for i, n in enumerate(names) if n not in fn.int_inputs]
    order = [(floats + ints).index(i) for i in range(len(names))]
    return (tuple(names), [fn.input_shapes[n] for n in names],
            [_I64 if n in fn.int_inputs else _F64 for n in names], floats, ints, order)


def joined(arrays, batch, record=None):
    """The integer `arrays` as float64 arrays of their shapes, with a leading axis of 1 unless `batch` (views of one
    buffer, converted at once), when every value is plainly within (-2**53, 2**53); else None (`check_ints` looks
    at each as the integers it holds). `record`: the arrays' layout as one record (`_record`), whose fields are the
    views at a third of the cost of slicing and reshaping each (det: 22 tables, 16 us)."""
    every = np.concatenate([a.ravel() for a in arrays], dtype=_F64)
    if not every.size:
        return [every.reshape(a.shape if batch else (1, *a.shape)) for a in arrays]
    # one BLAS pass, no temporary: the squares are non-negative and rounding is monotone, so the sum of squares
    # reaches 2**106 when one value reaches 2**53 (an int64 of 2**53 + 1 converts to at least 2**53); a sum that
    # reaches it with every value in range (many near 2**53) only sends the arrays to `check_ints`
    if not np.dot(every, every) < _SQUARED:
        return None
    if record is not None:
        every = np.ndarray((1,), record, every)  # (`every.view(record)` checks the view in Python: 1.3 us more)
        return [every[n] for n in record.names]
    out, at = [], 0
    for a in arrays:
        n = a.size
        out.append(every[at:at + n].reshape(a.shape if batch else (1, *a.shape)))
        at += n
    return out


def _record(fn):
    """The int64 inputs of `fn`, in input order, as the fields of one float64 record (made once per function)."""
    record = fn._int_record
    if record is None:
        record = fn._int_record = np.dtype([(n, _F64, fn.input_shapes[n]) for n in fn.input_names
                                            if n in fn.int_inputs])
    return record


def check_ints(fn, xs, given=None):
    """Every int64 input holds integers a float64 represents exactly (|v| <= 2**53). `given`: the inputs as sent,
    by name. Those sent as integers (an integer array, JSON's integers) are compared as integers (as floats,
    2**53 + 1 would round to 2**53 first), the int64 arrays among them by their extremes, all at once; the rest
    as their float64 values."""
    sent = {n: as_sent(given.get(n)) for n in fn.int_inputs} if given is not None else {}
    sent = {n: a for n, a in sent.items() if a is not None}
    wide = [a for a in sent.values() if a.dtype == np.int64 and a.size]  # (with a uint64, floats: not exact)
    if wide:
        every = np.concatenate(wide, axis=None)
        if not (np.minimum.reduce(every) >= -_MAX_EXACT_INT and np.maximum.reduce(every) <= _MAX_EXACT_INT):
            wide = None  # one is out of range: each is checked below, to name it
    for n, a in zip(fn.input_names, xs):
        if n not in fn.int_inputs:
            continue
        a = sent.get(n, a)
        if a.dtype.kind in "iu":
            if a.dtype.itemsize <= 4 or not a.size or (wide is not None and a.dtype == np.int64):
                continue  # in range: narrower ones always, the int64 ones all at once above
            bad = (a < -_MAX_EXACT_INT) | (a > _MAX_EXACT_INT)
        else:
            a = np.asarray(a)
            bad = ~((np.rint(a) == a) & (np.abs(a) <= _MAX_EXACT))
        if bad.any():
            v = a[bad].reshape(-1)[0]
            v = int(v) if a.dtype.kind in "iu" else f"{float(v):.17g}"
            raise EvaluationError(f"inputs.{n} is an int64 input, but holds {v}: its values must be integers "
                                  f"of magnitude at most 2**53", code="bad_integer")


def as_sent(value):
    """An int64 input's value as sent, when it is integers: an integer array, or JSON's integers (a list or an
    int) as one; else None."""
    if type(value) in (list, int):
        value = np.asarray(value)
    if type(value) is np.ndarray and value.dtype.kind in "iu":
        return value
    return None
