"""GPU schedules for the kernels built with the CPU's: one rewrite of the kernel IR, not a GPU
copy of every builder.

A CPU kernel is a parallel loop over rows (image, channel, output row, ...) whose iterations
each walk their row serially: the loop LLVM vectorizes. On a GPU that is one thread a row,
neighbouring threads reading addresses a row apart, and few threads where the rows are few.
:func:`gpu_schedule` rewrites such a kernel into one of two GPU forms, chosen by what the row's
body does (a kernel that fits neither keeps its thread per row):

- **A thread per element** (:func:`per_element`): the row's body is invariants (``Let``) then
  one serial loop whose iterations are independent (:func:`independent`). The two loops become
  one parallel loop over ``rows * extent``; thread ``e`` recomputes its row's invariants
  (row ``e // extent``) and runs iteration ``e % extent``: neighbouring threads, neighbouring
  elements. Element-wise and broadcast chains, pooling windows, upsampling, padding rows,
  slices, flips; a closing run of branches that each loop over the same range (a
  concatenation choosing its input) is one loop first (:func:`_hoisted`).
- **A block per row** (:func:`per_block`): the row's body sums or takes the maximum of its
  values (a *reduction* loop: each carried local updated as ``acc = acc + term`` or ``acc =
  max(acc, term)``) and then stores: global pooling, softmax, group norm's statistics. The
  row's :data:`BLOCK_THREADS` threads each run every :data:`BLOCK_THREADS`-th iteration of
  every loop (neighbouring threads, neighbouring values; a loop over a group's channels and
  the one over each channel's values as one); a reduction's partials meet in shared memory and
  are combined pairwise (:func:`pairwise_rounds`), after which every thread holds the row's
  value; a store outside the loops is thread 0's. A row that reads, after a loop, a local the
  loop left behind (one thread's last iteration) keeps the CPU's schedule.

A kernel of one thread (a serial loop over a few values per channel, where the CPU's threads
would cost more than the work) gets a thread per iteration where the iterations are
independent, then, where it fits, one of these forms.

Iterations are independent when no local is carried from one to the next and every array
stored is stored at one index, read, if at all, only there, and distinct per iteration: affine
in the loop variable with a coefficient, for this layer's sizes, larger than the span of the
loops nested in the body. The sizes are the lowering's (``ints``): the driver rewrites every
per-node kernel on a backend whose threads cooperate (``Backend.thread_blocks``) for its
node's sizes, and the CUDA backend every other kernel it is handed (a convolution's epilogue,
the layout kernels) for none, where only literal coefficients decide; a kernel whose
coefficients the sizes do not decide keeps its schedule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import fields, replace

from .kernel_ir import (
    F64,
    Barrier,
    BinOp,
    Call,
    Comment,
    Const,
    Div,
    Expr,
    If,
    Kernel,
    Let,
    Load,
    Loop,
    Select,
    Shared,
    Stmt,
    Store,
    Var,
    VBroadcast,
    VLoad,
    VStore,
    binop,
    cmp,
    evaluate_int,
)

__all__ = ["BLOCK_THREADS", "ELEMENT_NOTE", "BLOCK_NOTE", "gpu_schedule", "schedule_of",
           "per_element", "per_block", "independent", "pairwise_rounds", "reduction"]

#: Threads of a block of a row's reduction (a power of two: the pairwise rounds).
BLOCK_THREADS = 128

#: The comments that open the rewritten loops' bodies (the printed kernel says its schedule;
#: :func:`schedule_of` reads it back).
ELEMENT_NOTE = "GPU schedule: a thread per element of the CPU's rows"
BLOCK_NOTE = "GPU schedule: a block per row, its threads striding the row"

#: The reductions a loop may carry: the operator of ``acc = acc op term``.
_REDUCTIONS = ("+", "max", "min")


def gpu_schedule(kernel: Kernel, ints: Mapping[str, int]) -> Kernel:
    """``kernel`` in a GPU form (the module docstring) for the sizes ``ints`` (the kernel's
    integer arguments but the batch size), or ``kernel`` itself where it fits none."""
    split = _split_top(kernel)
    one_thread = split is None
    split = split or _serial_top(kernel, ints)
    if split is None:
        return kernel
    pre, loop, post = split
    env = dict(ints)
    for s in pre:  # invariants the coefficients may name
        if isinstance(s, Let):
            try:
                env[s.var] = evaluate_int(s.value, env)
            except ValueError:
                pass
    names = _all_names(kernel)
    rewritten = per_element(loop, env, names, _params_and(pre, kernel))
    if rewritten is None:
        rewritten = per_block(loop, env, names)
    if rewritten is None:
        if one_thread:  # made parallel: a thread per iteration
            return replace(kernel, body=[*pre, loop, *post])
        return kernel
    return replace(kernel, body=[*pre, rewritten, *post])


def schedule_of(kernel: Kernel) -> str:
    """How ``kernel`` runs on a GPU: ``block`` (a block per row or tile whose threads
    cooperate), ``element`` (a thread per element: :func:`per_element`'s form, or a parallel
    loop with no loop in it), ``output`` (a thread per output value that reads its inputs in
    serial loops: a window, a plane), ``row`` (a thread walking a row, storing as it goes: the
    CPU's schedule) or ``single`` (one thread)."""
    for s in kernel.body:
        if isinstance(s, Loop) and s.kind == "block":
            return "block"
        if isinstance(s, Loop) and s.kind == "parallel":
            if s.body and isinstance(s.body[0], Comment) and s.body[0].text == ELEMENT_NOTE:
                return "element"
            loops = [t for t, _ in _walk(s.body) if isinstance(t, Loop)]
            if any(_stored(t.body) for t in loops):
                return "row"
            return "output" if loops else "element"
    return "single"


def _split_top(kernel: Kernel) -> tuple[list[Stmt], Loop, list[Stmt]] | None:
    """``(invariants, the parallel loop, what follows)`` of a CPU-scheduled kernel."""
    for i, s in enumerate(kernel.body):
        if isinstance(s, Loop) and s.kind == "parallel":
            if s.body and isinstance(s.body[0], Comment) and s.body[0].text == ELEMENT_NOTE:
                return None  # rewritten already
            pre, post = kernel.body[:i], kernel.body[i + 1:]
            if all(isinstance(p, (Let, Comment)) for p in pre + post):
                return pre, s, post
            return None
        if isinstance(s, Loop) and s.kind == "block":
            return None
    return None


def _serial_top(kernel: Kernel, ints: Mapping[str, int]) -> tuple[
        list[Stmt], Loop, list[Stmt]] | None:
    """A kernel that is invariants then one serial loop of independent iterations (a few
    operations per channel, where starting the CPU's threads costs more than the work), as
    :func:`_split_top` gives it with that loop made parallel: a thread per iteration."""
    *pre, last = kernel.body or [Comment("")]
    if not (isinstance(last, Loop) and last.kind == "serial"
            and all(isinstance(s, (Let, Comment)) for s in pre)
            and _names(last.extent) | _names(last.start) <= _params_and(pre, kernel)):
        return None
    env = dict(ints)
    for s in pre:
        if isinstance(s, Let):
            try:
                env[s.var] = evaluate_int(s.value, env)
            except ValueError:
                pass
    if not independent(last, env):
        return None
    return pre, replace(last, kind="parallel"), []


def _params_and(pre: list[Stmt], kernel: Kernel) -> frozenset[str]:
    """The names a launch knows: the integer parameters and the invariants before the loop."""
    return frozenset([p.name for p in kernel.params if p.kind == "int"]
                     + [s.var for s in pre if isinstance(s, Let)])


# -- the two forms ------------------------------------------------------------------------------

def per_element(loop: Loop, env: Mapping[str, int], names: set[str],
                known: frozenset[str]) -> Loop | None:
    """The parallel ``loop`` over rows as one parallel loop over the rows' elements (the module
    docstring), or None where its row is not invariants then one independent loop whose
    extent the launch knows (``known`` names)."""
    *invariants, inner = _hoisted(loop.body)
    if not (isinstance(inner, Loop) and inner.kind == "serial"
            and all(isinstance(s, (Let, Comment)) for s in invariants)):
        return None
    if not _names(inner.extent) <= known:
        return None
    if not independent(inner, env) or _stored(inner.body) & _loaded_by(invariants):
        return None
    e = _fresh("elem", names)
    extent = inner.extent
    head: list[Stmt] = [Let(loop.var, loop.start + Var(e) // extent)]
    tail: list[Stmt] = [Let(inner.var, inner.start + Var(e) % extent)]
    return Loop(e, loop.extent * extent, [
        Comment(ELEMENT_NOTE), *head, *invariants, *tail, *inner.body], kind="parallel")


def _hoisted(body: list[Stmt]) -> list[Stmt]:
    """``body`` with a closing run of branches that each set locals and then loop over the
    same range (a concatenation: the input a channel comes from chooses the copy) turned into
    one loop over that range whose iterations take the branches: ``if c: lets; for j: b``
    ... as ``for j: (if c: lets; b) ...`` (:func:`independent` then decides whether the
    iterations may run apart)."""
    start = len(body)
    while start > 0 and _branch_loop(body[start - 1]) is not None:
        start -= 1
    branches = [_branch_loop(s) for s in body[start:]]
    if not branches:
        return body
    loops = [b[1] for b in branches if b is not None]
    first = loops[0]
    if any(lp.var != first.var or repr(lp.extent) != repr(first.extent)
           or repr(lp.start) != repr(first.start) for lp in loops):
        return body
    merged: list[Stmt] = []
    for s, branch in zip(body[start:], branches):
        assert isinstance(s, If) and branch is not None
        lets, lp = branch
        merged.append(If(s.cond, [*lets, *lp.body]))
    return [*body[:start], Loop(first.var, first.extent, merged, start=first.start)]


def _branch_loop(s: Stmt) -> tuple[list[Stmt], Loop] | None:
    """``(lets, loop)`` of a branch ``if c: lets; loop`` without an else, or None."""
    if not (isinstance(s, If) and not s.orelse and s.body):
        return None
    *lets, lp = s.body
    if not (isinstance(lp, Loop) and lp.kind == "serial"
            and all(isinstance(x, (Let, Comment)) for x in lets)):
        return None
    return lets, lp


def per_block(loop: Loop, env: Mapping[str, int], names: set[str]) -> Loop | None:
    """The parallel ``loop`` over rows as a block per row (the module docstring), or None
    where its row is not invariants, reductions, independent loops and stores, with at least
    one reduction, each array stored in one place and read only there."""
    th, it, at = Var(_fresh("th", names)), _fresh("it", names), _fresh("it_at", names)
    body: list[Stmt] = []
    shared: list[Stmt] = []
    doubles = _doubles(loop.body)
    stored_at: dict[str, int] = {}
    stale: set[str] = set()  # locals a loop left as its last iteration did: one thread's
    for index, s in enumerate(loop.body):
        if _read_first(s) & stale:
            return None
        if isinstance(s, Let):
            stale.discard(s.var)
        if isinstance(s, (Let, Comment)):
            body.append(s)
        elif isinstance(s, Store):
            body.append(If(cmp("==", th, 0), [s]))
        elif isinstance(s, Loop) and s.kind == "serial":
            carried = reduction(s)
            stale |= (_assigned(s.body) | {s.var}) - set(carried or ())
            if carried is not None and any(_integer(loop.body[:index], v) for v in carried):
                return None  # the partials meet in float arrays
            if carried is not None and not _stored(s.body):
                red = _fresh(f"red{len(shared)}", names)
                names.add(red)
                body += _block_reduction(s, carried, th, it, at, red, doubles, env)
                shared += [Shared(f"{red}_{k}", BLOCK_THREADS, double=var in doubles)
                           for k, var in enumerate(carried)]
            elif independent(s, env):
                body.append(_strided(s, th, it, at, env))
            else:
                return None
        else:
            return None
        for a in _stored([s]):
            if a in stored_at:
                return None
            stored_at[a] = index
    if not shared:
        return None
    for index, s in enumerate(loop.body):  # an array stored is read only where it is stored
        if _loaded_by([s]) & {a for a, where in stored_at.items() if where != index}:
            return None
    return Loop(loop.var, loop.extent, [
        *shared, Loop(th.name, Const(BLOCK_THREADS), [Comment(BLOCK_NOTE), *body],
                      kind="thread")], kind="block", start=loop.start)


def _integer(before: list[Stmt], var: str) -> bool:
    """Whether ``var``'s last value in the statements ``before`` is an integer literal (a
    count, which a float reduction would change the type of)."""
    lets = [s for s in before if isinstance(s, Let) and s.var == var]
    return bool(lets) and isinstance(lets[-1].value, Const) and isinstance(
        lets[-1].value.value, int)


def _scoped_reads(stmts: list[Stmt], names: Callable[[Stmt], set[str]]) -> set[str]:
    """The locals that a statement of ``stmts``, or of the bodies within them, names
    (``names(s)``) where no earlier statement of its scope has assigned them."""
    found: set[str] = set()

    def visit(body: list[Stmt], defined: set[str]) -> None:
        for t in body:
            found.update(names(t) - defined)
            if isinstance(t, Let):
                defined.add(t.var)
            elif isinstance(t, Loop):
                visit(t.body, defined | {t.var})
            elif isinstance(t, If):
                visit(t.body, set(defined))
                visit(t.orelse, set(defined))

    visit(stmts, set())
    return found


def _read_first(s: Stmt) -> set[str]:
    """The locals statement ``s`` may read before it assigns them (all it reads, but for a
    loop's or branch's body the locals assigned earlier in it)."""
    return _scoped_reads([s], _own_names)


def _strided(loop: Loop, th: Var, it: str, at: str, env: Mapping[str, int]) -> Loop:
    """``loop`` run by the block's threads, thread ``th`` taking every
    :data:`BLOCK_THREADS`-th iteration from its own; a loop whose body is locals then one
    independent loop of a known range (a group's channels, then each channel's values) as
    one loop over both (its index ``at``), so that every thread has values to take."""
    i = Var(it)
    *lets, inner = loop.body or [Comment("")]
    if (isinstance(inner, Loop) and inner.kind == "serial"
            and all(isinstance(s, (Let, Comment)) for s in lets)
            and not (_names(inner.extent) | _names(inner.start)) & _assigned(loop.body)
            and loop.var not in _names(inner.extent) | _names(inner.start)
            and independent(inner, env)):
        flat = Var(at)
        return Loop(it, (loop.extent * inner.extent - th + (BLOCK_THREADS - 1))
                    // BLOCK_THREADS, [
            Let(flat.name, th + i * BLOCK_THREADS),
            Let(loop.var, loop.start + flat // inner.extent), *lets,
            Let(inner.var, inner.start + flat % inner.extent), *inner.body])
    trips = (loop.extent - th + (BLOCK_THREADS - 1)) // BLOCK_THREADS
    return Loop(it, trips, [Let(loop.var, loop.start + th + i * BLOCK_THREADS), *loop.body])


def _block_reduction(loop: Loop, carried: dict[str, str], th: Var, it: str, at: str,
                     red: str, doubles: set[str], env: Mapping[str, int]) -> list[Stmt]:
    """The reduction ``loop`` by a block: each thread its partial over its iterations (a
    sum's from zero, a maximum's from the value before the loop, which it may hold any number
    of times), the partials in the shared arrays ``red_<k>``, combined pairwise, and every
    thread's carried locals set to the block's result."""
    out: list[Stmt] = []
    for var, op in carried.items():
        if op == "+":
            zero: Expr = F64(0.0) if var in doubles else Const(0.0)
            out += [Let(f"{var}_{red}", Var(var)), Let(var, zero)]
    out.append(_strided(loop, th, it, at, env))
    arrays = [(f"{red}_{k}", _combine(op)) for k, op in enumerate(carried.values())]
    out += [Store(name, th, Var(var)) for (name, _), var in zip(arrays, carried)]
    out.append(Barrier())
    out += pairwise_rounds(th, BLOCK_THREADS, arrays)
    for (name, _), (var, op) in zip(arrays, carried.items()):
        total = Load(name, Const(0))
        out.append(Let(var, Var(f"{var}_{red}") + total if op == "+" else total))
    return out


def _combine(op: str) -> Callable[[Expr, Expr], Expr]:
    return lambda a, b: binop(op, a, b) if op == "+" else BinOp(op, a, b)


def pairwise_rounds(th: Expr, threads: int,
                    arrays: Sequence[tuple[str, Callable[[Expr, Expr], Expr]]]) -> list[Stmt]:
    """The partials of a block's ``threads`` threads (a power of two), stored at ``[th]`` of
    each shared array of ``arrays``, combined pairwise into ``[0]``: thread ``i`` combines
    ``i + h`` into ``i`` for ``h`` = threads / 2, ..., 1, a barrier after each round, so the
    result is the same whatever order the threads run in. The rounds start after a barrier
    that follows the partials' stores."""
    out: list[Stmt] = []
    half = threads // 2
    while half:
        out += [If(cmp("<", th, half), [
            Store(name, th, combine(Load(name, th), Load(name, th + half)))
            for name, combine in arrays]), Barrier()]
        half //= 2
    return out


# -- what a loop does ------------------------------------------------------------------------------

def reduction(loop: Loop) -> dict[str, str] | None:
    """The locals ``loop`` carries from one iteration to the next and the operator each is
    reduced with (``acc = acc op term``, ``op`` in ``+ max min``, ``term`` reading no carried
    local), or None where its body is more than such updates and locals of its own (no
    nested loop, branch or store) or carries nothing."""
    if not all(isinstance(s, (Let, Comment)) for s in loop.body):
        return None
    carried = _carried(loop)
    if not carried:
        return None
    ops: dict[str, str] = {}
    for s in loop.body:
        if not isinstance(s, Let):
            continue
        if s.var not in carried:
            if _names(s.value) & carried:
                return None
            continue
        v = s.value
        if s.var in ops or not (isinstance(v, BinOp) and v.op in _REDUCTIONS):
            return None
        own, term = (v.a, v.b) if isinstance(v.a, Var) and v.a.name == s.var else (v.b, v.a)
        if not (isinstance(own, Var) and own.name == s.var) or _names(term) & carried:
            return None
        ops[s.var] = v.op
    return ops


def independent(loop: Loop, env: Mapping[str, int]) -> bool:
    """Whether the iterations of serial ``loop`` may run in any order, at once: no local
    carried from one to the next, no vectors, shared arrays or barriers, and each array it
    stores stored at one index, read only at that index, and distinct per iteration: affine
    in the loop variable with a coefficient (for the sizes ``env``) larger than the span the
    loops nested in the body reach (their bounds known from ``env``)."""
    if _carried(loop):
        return False
    for s, _ in _walk(loop.body):
        if isinstance(s, (VStore, Shared, Barrier)) or (
                isinstance(s, Loop) and s.kind != "serial"):
            return False
    extents: dict[str, int] = {}  # the nested loops' variables: how far each reaches
    unbounded: set[str] = set()  # (an index naming one of these is refused)
    for s, _ in _walk(loop.body):
        if isinstance(s, Loop):
            try:
                evaluate_int(s.start, env)
                extents[s.var] = max(extents.get(s.var, 0), evaluate_int(s.extent, env))
            except ValueError:
                unbounded.add(s.var)
    for var in unbounded:
        extents.pop(var, None)
    lets = [s for s, _ in _walk(loop.body) if isinstance(s, Let)]
    once = {s.var: s.value for s in lets if sum(t.var == s.var for t in lets) == 1}
    unknown = _assigned(loop.body) - set(once) - set(extents)
    for array, indices in _store_indices(loop.body).items():
        keys = {repr(i) for i in indices}
        if len(keys) != 1 or any(repr(ld.index) not in keys for ld in _loads_of(loop.body, array)):
            return False
        spans = []
        for var, extent in [(loop.var, 2), *extents.items()]:
            coefficient = _coefficient(indices[0], var, once, unknown)
            if coefficient is None:
                return False
            try:
                spans.append(abs(evaluate_int(coefficient, env)) * (extent - 1))
            except ValueError:
                return False
        if spans[0] <= sum(spans[1:]):
            return False
    return True


def _carried(loop: Loop) -> set[str]:
    """The locals an iteration of ``loop`` may read before it assigns them, and assigns (a
    ``Let`` of a local from a value that does not read it reads nothing of it)."""
    def names(s: Stmt) -> set[str]:
        own = _own_names(s)
        return own - {s.var} if isinstance(s, Let) and not _uses(s.value, s.var) else own
    return _scoped_reads(loop.body, names) & _assigned(loop.body)


def _coefficient(e: Expr, var: str, defs: Mapping[str, Expr],
                 unknown: set[str]) -> Expr | None:
    """The coefficient of ``var`` in ``e`` where ``e`` is affine in it (locals in ``defs``
    replaced by their one definition), else None; locals in ``unknown`` (assigned more than
    once in the loop) make it None where they appear."""
    if isinstance(e, Var):
        if e.name == var:
            return Const(1)
        if e.name in defs:
            return _coefficient(defs[e.name], var, defs, unknown)
        return None if e.name in unknown else Const(0)
    if isinstance(e, BinOp) and e.op in ("+", "-", "*"):
        a = _coefficient(e.a, var, defs, unknown)
        b = _coefficient(e.b, var, defs, unknown)
        if a is None or b is None:
            return None
        if e.op != "*":
            return binop(e.op, a, b)
        if _is_zero(a):
            return binop("*", e.a, b)
        if _is_zero(b):
            return binop("*", a, e.b)
        return None
    depends = _names(e) & ({var} | set(defs) | unknown)
    return Const(0) if not depends else None


def _is_zero(e: Expr) -> bool:
    return isinstance(e, Const) and e.value == 0


# -- walks -------------------------------------------------------------------------------------

def _walk(stmts: list[Stmt]) -> Iterator[tuple[Stmt, int]]:
    for s in stmts:
        yield s, 0
        if isinstance(s, Loop):
            yield from _walk(s.body)
        elif isinstance(s, If):
            yield from _walk(s.body)
            yield from _walk(s.orelse)


def _exprs(s: Stmt) -> list[Expr]:
    """The expressions statement ``s`` itself holds (not those of its nested statements)."""
    if isinstance(s, Let):
        return [s.value]
    if isinstance(s, (Store, VStore)):
        return [s.index, s.value]
    if isinstance(s, Loop):
        return [s.start, s.extent]
    if isinstance(s, If):
        return [s.cond]
    return []


def _sub(e: Expr) -> Iterator[Expr]:
    yield e
    for f in fields(e):
        value = getattr(e, f.name)
        if isinstance(value, Expr):
            yield from _sub(value)
        elif isinstance(value, tuple):
            for a in value:
                if isinstance(a, Expr):
                    yield from _sub(a)


def _names(e: Expr) -> set[str]:
    return {x.name for x in _sub(e) if isinstance(x, Var)}


def _uses(e: Expr, var: str) -> bool:
    return var in _names(e)


def _own_names(s: Stmt) -> set[str]:
    """The locals statement ``s`` reads (a loop: its bounds)."""
    out: set[str] = set()
    for e in _exprs(s):
        out |= _names(e)
    return out


def _assigned(stmts: list[Stmt]) -> set[str]:
    return {s.var for s, _ in _walk(stmts) if isinstance(s, (Let, Loop))}


def _stored(stmts: list[Stmt]) -> set[str]:
    return {s.array for s, _ in _walk(stmts) if isinstance(s, (Store, VStore))}


def _store_indices(stmts: list[Stmt]) -> dict[str, list[Expr]]:
    out: dict[str, list[Expr]] = {}
    for s, _ in _walk(stmts):
        if isinstance(s, (Store, VStore)):
            out.setdefault(s.array, []).append(s.index)
    return out


def _loads_of(stmts: list[Stmt], array: str) -> list[Load]:
    return [x for s, _ in _walk(stmts) for e in _exprs(s) for x in _sub(e)
            if isinstance(x, Load) and x.array == array]


def _loaded_by(stmts: list[Stmt]) -> set[str]:
    return {x.array for s, _ in _walk(stmts) for e in _exprs(s) for x in _sub(e)
            if isinstance(x, (Load, VLoad, VBroadcast))}


def _all_names(kernel: Kernel) -> set[str]:
    out = {p.name for p in kernel.params}
    for s, _ in _walk(kernel.body):
        out |= _own_names(s)
        if isinstance(s, (Let, Loop)):
            out.add(s.var)
        if isinstance(s, Shared):
            out.add(s.name)
    return out


def _fresh(base: str, names: set[str]) -> str:
    name, n = base, 1
    while name in names:
        n += 1
        name = f"{base}{n}"
    names.add(name)
    return name


def _doubles(stmts: list[Stmt]) -> set[str]:
    """The locals of ``stmts`` that hold float64 values (as the printers type them: a
    ``f64()`` or float64 literal, a true division, a value computed from one), so that a
    reduction's shared partials keep their precision."""
    doubles: set[str] = set()

    def double(e: Expr) -> bool:
        if isinstance(e, (F64, Div)):
            return True
        if isinstance(e, Call):
            return e.fn == "f64" or (e.fn not in ("f32", "int") and any(map(double, e.args)))
        if isinstance(e, Var):
            return e.name in doubles
        if isinstance(e, BinOp):
            return e.op in ("+", "-", "*", "max", "min") and (double(e.a) or double(e.b))
        if isinstance(e, Select):
            return double(e.a) or double(e.b)
        return False

    for _ in range(3):
        for s, _ in _walk(stmts):
            if isinstance(s, Let) and double(s.value):
                doubles.add(s.var)
    return doubles

