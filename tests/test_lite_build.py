# SPDX-License-Identifier: MIT
"""Building messages with spice_criu.images.lite gives protobuf's bytes, presence and errors.

The same random program (scalar assignments, `child.field = v`, SetInParent, CopyFrom, MergeFrom,
append / extend / add() on repeated fields, keyword construction, ClearField) runs on a protobuf
message and on a lite one, for every CRIU message type; then both must serialize to the same bytes,
agree field by field, and raise the same exception types for the same bad values.
"""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import pytest
from google.protobuf.descriptor import FieldDescriptor as FD

from spice_criu.images import codec, lite

HERE = Path(__file__).resolve().parent


def _sibling(name: str):
    mod = sys.modules.get(name)
    if mod is None:
        spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return mod


T = _sibling("test_lite")
NAMES = T.NAMES


def build(pm, lm, rng: random.Random, depth: int = 0) -> None:
    """Apply one random program to both messages."""
    for f in pm.DESCRIPTOR.fields:
        if rng.random() < 0.45:
            continue
        pf, lf = getattr(pm, f.name), getattr(lm, f.name)
        if f.type == FD.TYPE_MESSAGE:
            if depth > 3:
                continue
            sub = f.message_type.full_name
            if f.is_repeated:
                op = rng.randrange(3)
                if op == 0:
                    for _ in range(rng.randint(0, 2)):
                        build(pf.add(), lf.add(), rng, depth + 1)
                else:
                    srcs = [fresh(sub, rng, depth + 1) for _ in range(rng.randint(0, 2))]
                    if op == 1:
                        for a, b in srcs:
                            pf.append(a)
                            lf.append(b)
                    else:
                        pf.extend(a for a, _ in srcs)
                        lf.extend(b for _, b in srcs)
            else:
                op = rng.randrange(5)
                if op == 0:
                    build(pf, lf, rng, depth + 1)  # child.field = v: the child becomes present
                elif op == 1:
                    pf.SetInParent()
                    lf.SetInParent()
                elif op in (2, 3):
                    a, b = fresh(sub, rng, depth + 1)
                    (pf.CopyFrom if op == 2 else pf.MergeFrom)(a)
                    (lf.CopyFrom if op == 2 else lf.MergeFrom)(b)
                else:  # only reading the child: it stays absent
                    _ = (pf.ListFields(), lf.SerializePartialToString())
        elif f.is_repeated:
            vals = [T._value(f, rng) for _ in range(rng.randint(0, 4))]
            if rng.random() < 0.5:
                pf.extend(vals)
                lf.extend(vals)
            else:
                for v in vals:
                    pf.append(v)
                    lf.append(v)
        else:
            v = T._value(f, rng)
            setattr(pm, f.name, v)
            setattr(lm, f.name, v)
    if rng.random() < 0.1 and pm.DESCRIPTOR.fields:
        f = rng.choice(pm.DESCRIPTOR.fields)
        pm.ClearField(f.name)
        lm.ClearField(f.name)


def fresh(name: str, rng: random.Random, depth: int):
    a, b = T.pb_class(name)(), lite.message_class(name)()
    build(a, b, rng, depth)
    return a, b


def assert_built_alike(pm, lm) -> None:
    data = pm.SerializePartialToString()
    assert lm.SerializePartialToString() == data
    T.assert_same(pm, lm)
    assert lm.SerializePartialToString() == data  # reading unset fields changed nothing
    if pm.IsInitialized():
        assert lm.SerializeToString() == pm.SerializeToString()
    else:
        with pytest.raises(lite.EncodeError):
            lm.SerializeToString()


@pytest.mark.parametrize("name", NAMES)
def test_random_programs_build_protobufs_bytes(name: str) -> None:
    rng = random.Random(f"build-{name}")
    for _ in range(25):
        assert_built_alike(*fresh(name, rng, 0))


@pytest.mark.parametrize("name", NAMES)
def test_keyword_construction(name: str) -> None:
    rng = random.Random(f"kw-{name}")
    for _ in range(10):
        kw = {}
        for f in T.pb_class(name).DESCRIPTOR.fields:
            if rng.random() < 0.5:
                continue
            if f.type == FD.TYPE_MESSAGE:
                a, b = fresh(f.message_type.full_name, rng, 3)
                if f.is_repeated:
                    kw[f.name] = ([a], [b])
                else:
                    kw[f.name] = (a, b) if rng.random() < 0.5 else ({}, {})
            elif f.is_repeated:
                v = [T._value(f, rng) for _ in range(rng.randint(0, 3))]
                kw[f.name] = (v, v)
            else:
                v = T._value(f, rng)
                kw[f.name] = (v, v)
        pm = T.pb_class(name)(**{k: a for k, (a, _) in kw.items()})
        lm = lite.message_class(name)(**{k: b for k, (_, b) in kw.items()})
        assert_built_alike(pm, lm)


BAD_VALUES = [True, False, 1.5, "7", "REG", "NATIVE", b"x", b"\xff", None, -1, 2**31, 2**32, -(2**63) - 1, 2**64,
              99999, 0]


@pytest.mark.parametrize("name", ["reg_file_entry", "file_entry", "autofs_entry", "sk_opts_entry",
                                  "user_x86_regs_entry", "creds_entry", "tty_info_entry", "pipe_data_entry"])
def test_bad_values_fail_alike(name: str) -> None:
    for f in T.pb_class(name).DESCRIPTOR.fields:
        if f.type == FD.TYPE_MESSAGE:
            continue
        for v in BAD_VALUES:
            outcome = []
            for m in (T.pb_class(name)(), lite.message_class(name)()):
                try:
                    if f.is_repeated:
                        getattr(m, f.name).append(v)
                        got = list(getattr(m, f.name))
                    else:
                        setattr(m, f.name, v)
                        got = getattr(m, f.name)
                    outcome.append(("ok", got, m.SerializePartialToString()))
                except (TypeError, ValueError, OverflowError) as e:
                    outcome.append((type(e).__mro__[0] if not isinstance(e, UnicodeError) else UnicodeError,))
            assert outcome[0] == outcome[1], (name, f.name, v, outcome)


def test_structure_assignment_is_refused_alike() -> None:
    for m in (codec.pb("reg_file_entry")(), codec.pb("reg_file_entry", lite=True)()):
        with pytest.raises(AttributeError):
            m.fown = codec.pb("reg_file_entry", lite=True)().fown
        with pytest.raises(AttributeError):
            m.build_id = [1]
        with pytest.raises(AttributeError):
            m.no_such_field = 1
        with pytest.raises(ValueError):
            type(m)(no_such_field=1)


def test_child_presence_propagates_up() -> None:
    p, q = codec.pb("core_entry")(), codec.pb("core_entry", lite=True)()
    for m in (p, q):
        m.tc.rlimits.rlimits.add(cur=1, max=2)
        m.thread_info.fpregs.xsave.SetInParent()
        _ = m.ids.files_id  # reading does not make ids present
    for m in (p, q):
        assert m.HasField("tc") and m.tc.HasField("rlimits") and m.HasField("thread_info")
        assert m.thread_info.HasField("fpregs") and m.thread_info.fpregs.HasField("xsave")
        assert not m.HasField("ids")
    assert p.SerializePartialToString() == q.SerializePartialToString()


def test_enum_tables() -> None:
    assert lite.enum_numbers("fd_types")["REG"] == 1 and lite.enum_numbers("fd_types")["AUTOFS_PIPE"] == 65535
    desc = codec.pb("file_entry").DESCRIPTOR.fields_by_name["type"].enum_type
    assert lite.enum_numbers("fd_types") == {v.name: v.number for v in desc.values}
