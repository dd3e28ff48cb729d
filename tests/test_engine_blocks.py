"""The query engine answers in small row blocks, on several threads, with its own attention kernel
(``bioworld.model.jepa._math_attention`` under ``torch.inference_mode``). These tests hold it to the
reference path: one module pass over all cells with the training kernel (fused attention), as the
engine computed before blocks existed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

N_CELLS = 37  # not a multiple of the block sizes used: partial blocks are exercised


@pytest.fixture(scope="module")
def cells(small_sim):
    a = small_sim.adata
    return a[np.flatnonzero(a.obs["perturbation"].astype(str).to_numpy() == "control")[:N_CELLS]].copy()


def _candidates(wm):
    from bioworld.query import Candidates

    gene = sorted({p.target for a in wm.actions.values() for p in a.components if p.kind == "ko"})[0]
    trained = sorted(lab for lab in wm.train_labels if "+" not in lab)[:2]
    cands = wm.engine.candidates([wm.parse(lab) for lab in [f"ko:{gene}", *trained]])
    clamp = np.zeros((2, len(wm.entity_names)), bool)
    clamp[0, 1] = clamp[1, [0, 2]] = True  # do() on slot 1, and on slots 0 and 2 together
    return cands + Candidates(["do1", "do02"], wm.space.encode(["control", "control"]), clamp)


def _reference(wm, x: np.ndarray, cands, heads: dict[int, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell answers ``[C, n, G]`` and shifts ``[C, n, E]`` from one pass over all cells, outside
    inference mode (the fused attention kernel training uses), do() terms summed as documented. An
    entity in ``heads`` (slot -> response slope ``[G]``) is not clamped: its head moves the other genes,
    and the answer's latents are f_theta's reading of its cells against the unperturbed prediction."""
    from bioworld.query._counterfactual import pin_members, silence_terms

    heads = heads or {}
    m, eng = wm.module, wm.engine
    n = len(x)
    xt = torch.from_numpy(x)
    scale = torch.from_numpy(eng.slot_scale)
    xs, shifts = [], []
    with torch.no_grad():
        ctrl = wm.space.encode(["control"]).take(np.zeros(n, dtype=np.int64))
        z = m.encode(xt)
        r_ref = m.readout(m.encode_target(xt))
        z_base = m.next(z, ctrl)
        x_base = m.expression_from(z_base, ctrl, xt, r_ref=r_ref)
        for i in range(len(cands)):
            act = cands.table.take(np.full(n, i))
            ents = np.flatnonzero(cands.clamp[i]).tolist()
            clamp = None
            terms = []
            for e in ents:
                x_off = torch.from_numpy(eng.axes.inactive(x, e))
                t = silence_terms(m, z, m.encode(x_off), e, xt, x_off)
                if e in heads:
                    resp = (t.move @ torch.from_numpy(eng.axes.axis[e]))[:, None] * torch.from_numpy(heads[e])[None]
                    t = type(t)(slot=z[:, e], dz=torch.zeros_like(z), dx=resp, move=t.move, pinned=t.pinned)
                terms.append(t)
            latent = [e for e in ents if e not in heads]
            if latent:
                inact = z.clone()
                for e, t in zip(ents, terms):
                    inact[:, e] = t.slot
                slots = torch.zeros(n, len(wm.entity_names), dtype=torch.bool)
                slots[:, latent] = True
                clamp = (slots, inact)
            z_new = m.next(z, act, clamp=clamp)
            x_new = m.expression_from(z_new, act, xt, r_ref=r_ref)
            if ents:
                x_new = x_new + sum(t.dx for t in terms)
                z_new = z_new + sum(t.dz for t in terms)
                pinned = torch.stack([t.pinned for t in terms]).any(0)
                x_new = pin_members(x_new, x_base, sum(t.move for t in terms), pinned)
            if any(e in heads for e in ents):
                z_new = z_base + m.encode(x_new) - m.encode(x_base)
            xs.append(x_new.numpy())
            shifts.append(((z_new - z_base).norm(dim=-1) / scale).numpy())
    return np.stack(xs), np.stack(shifts)


def test_blocked_engine_equals_the_one_pass_reference(tiny_trained, cells):
    wm = tiny_trained
    eng = wm.engine
    x = wm._cells_to_std(cells)
    cands = _candidates(wm)
    ref_x, ref_shift = _reference(wm, x, cands)
    cache = eng.encode(x)
    for rows in (None, 16, 5):  # default blocks (all 37 cells in one), 16 and 5 cells per block
        r = eng.run(cache, cands, rows_per_pass=rows)
        np.testing.assert_allclose(r.x_pred, ref_x, atol=2e-5, rtol=0, err_msg=f"rows_per_pass={rows}")
        np.testing.assert_allclose(r.shift, ref_shift, atol=2e-5, rtol=0, err_msg=f"rows_per_pass={rows}")
    # a wrong kernel or block bookkeeping would move the answers by far more than the tolerance
    assert np.abs(ref_x[0] - ref_x[3]).max() > 1e-2


def test_silences_answered_by_heads_equal_the_one_pass_reference(tiny_trained, cells):
    """A do() whose silenced entities all have a response head skips the predictor (its answer under the
    control action is the cached unperturbed prediction) and the moved cells' encoder pass, and reads its
    latents against f_theta(x_base) computed once per cell; a do() that also clamps a slot without a
    head keeps the predictor pass. Both equal the reference that runs everything for every row."""
    from bioworld.query import Candidates

    wm = tiny_trained
    x = wm._cells_to_std(cells)
    E = len(wm.entity_names)
    rng = np.random.default_rng(0)
    heads = {e: np.where(wm.engine.axes.axis[e] != 0, 0.0, rng.normal(size=len(wm.genes))).astype(np.float32)
             for e in (1, 3)}
    clamp = np.zeros((4, E), bool)
    clamp[0, 1] = clamp[1, [1, 3]] = clamp[2, [1, 2]] = clamp[3, 0] = True  # heads only x2, head + clamp, clamp
    cands = Candidates(["h1", "h13", "h1c2", "c0"], wm.space.encode(["control"] * 4), clamp)
    before = wm.silence_heads
    wm.silence_heads, wm._engine = {wm.entity_names[e]: v for e, v in heads.items()}, None
    try:
        eng = wm.engine
        ref_x, ref_shift = _reference(wm, x, cands, heads)
        calls = []
        predictor = wm.module.predictor.forward
        wm.module.predictor.forward = lambda *a, **k: calls.append(len(a[0])) or predictor(*a, **k)
        try:
            cache = eng.encode(x)
            calls.clear()
            only_heads = eng.run(cache, Candidates(cands.labels[:2], wm.space.encode(["control"] * 2), clamp[:2]))
            assert not calls  # no predictor pass for answers made by heads alone
            assert cache.z_read is not None and len(cache.z_read) == len(x)  # f_theta(x_base), once per cell
            r = eng.run(cache, cands, rows_per_pass=16)
            assert calls  # the clamped slots still go through the predictor
        finally:
            del wm.module.predictor.forward
        with torch.no_grad():
            read = wm.module.encode(cache.x_base)
        torch.testing.assert_close(cache.z_read, read, atol=1e-5, rtol=0)
        np.testing.assert_allclose(only_heads.x_pred, ref_x[:2], atol=2e-5, rtol=0)
        np.testing.assert_allclose(r.x_pred, ref_x, atol=2e-5, rtol=0)
        np.testing.assert_allclose(r.shift, ref_shift, atol=2e-5, rtol=0)
        assert np.abs(ref_x[0] - ref_x[2]).max() > 1e-2 and np.abs(ref_shift[0] - ref_shift[1]).max() > 1e-3
    finally:
        wm.silence_heads, wm._engine = before, None


def test_answers_do_not_depend_on_the_number_of_worker_threads(tiny_trained, cells):
    wm = tiny_trained
    eng = wm.engine
    x = wm._cells_to_std(cells)
    cands = _candidates(wm)
    before, threads_before = torch.get_num_threads(), eng.threads
    try:
        runs = {}
        for threads in (1, 2):
            eng.threads = threads
            assert eng.workers == threads
            cache = eng.encode(x)
            runs[threads] = (cache.x_base.numpy().copy(), eng.run(cache, cands, rows_per_pass=8))
    finally:
        eng.threads = threads_before
    assert torch.get_num_threads() == before  # the query put torch's own count back
    np.testing.assert_array_equal(runs[1][0], runs[2][0])
    np.testing.assert_array_equal(runs[1][1].x_pred, runs[2][1].x_pred)  # bitwise: blocks are computed alone
    np.testing.assert_array_equal(runs[1][1].shift, runs[2][1].shift)


def test_queries_use_every_core_unless_the_model_pins_threads(tiny_trained, monkeypatch):
    from dataclasses import replace

    wm = tiny_trained
    before = wm.train_config
    monkeypatch.setattr("os.cpu_count", lambda: 6)  # TrainConfig reads it at each call
    try:
        wm.train_config = replace(before, num_threads=0)  # automatic: training takes half the cores, queries all
        assert wm.train_config.resolved_threads() == 3
        assert wm.engine.threads == 6 and wm.engine.workers == 6
        wm.train_config = replace(before, num_threads=2)  # pinned by the user: queries too
        assert wm.engine.threads == 2 and wm.engine.workers == 2
        monkeypatch.setattr("os.cpu_count", lambda: 64)
        wm.train_config = replace(before, num_threads=0)
        assert wm.engine.workers == 8  # the automatic choice is capped
    finally:
        wm.train_config = before


def test_math_attention_equals_the_fused_kernel(monkeypatch):
    import bioworld.model.jepa as jepa

    torch.manual_seed(0)
    blk = jepa._Block(32, 4, 2.0, 0.0).eval()
    x = torch.randn(6, 11, 32)
    with torch.no_grad():
        fused = blk(x)
    calls = []
    fused_kernel = jepa.F.scaled_dot_product_attention
    monkeypatch.setattr(jepa.F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or fused_kernel(*a, **k))
    with torch.inference_mode():
        math = blk(x)
    assert not calls  # queries take the math path
    with torch.no_grad():
        blk(x)
    assert calls  # training and validation keep the fused kernel
    torch.testing.assert_close(math, fused, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # the attention alone: the math path is the same function as the fused kernel
        qkv = blk.attn.qkv(blk.norm1(x))
        ref = blk.attn(blk.norm1(x))
    torch.testing.assert_close(blk.attn.proj(jepa._math_attention(qkv, 4)), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scale", [1.0, 40.0])
def test_math_attention_softmax_is_exact_with_and_without_the_max(scale):
    """The query path's softmax skips the max subtraction only while every row sum of exp(scores) is
    safe; scores large enough to overflow exp (scale 40: |scores| in the hundreds) take the
    max-subtracted softmax, and both equal the fused kernel (float64 reference)."""
    import bioworld.model.jepa as jepa

    torch.manual_seed(1)
    qkv = torch.randn(5, 13, 3 * 16, dtype=torch.float64) * scale
    B, T, _ = qkv.shape
    q, k, v = qkv.view(B, T, 3, 2, 8).permute(2, 0, 3, 1, 4)  # [B, h, T, c]
    ref = jepa.F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, 16)
    with torch.inference_mode():
        out = jepa._math_attention(qkv.float(), 2).double()
        plain = torch.exp(torch.einsum("btc,bsc->bts", qkv[:, :, :8], qkv[:, :, 16:24]) / 8 ** 0.5).sum(-1)
    assert bool(torch.isfinite(out).all())
    # scale 1: the plain path was taken (sums in range); scale 40: some sum overflows, the fallback ran
    assert bool(((plain > 1e-30) & (plain < 1e30)).all()) is (scale == 1.0)
    torch.testing.assert_close(out, ref, atol=2e-5 * scale, rtol=1e-4)


class _Counted:
    """A fused-linear kernel that counts its calls (``op(...)`` and ``op.binary(...)``)."""

    def __init__(self, op, calls):
        self.op, self.calls = op, calls

    def __call__(self, *a):
        self.calls.append(a[3])
        return self.op(*a)

    def binary(self, *a):
        self.calls.append(a[4])
        return self.op.binary(*a)


@pytest.mark.parametrize("fused", [True, False])
def test_query_blocks_and_readout_equal_the_modules(monkeypatch, fused):
    """Queries run each transformer block and the readout with bias, GELU and residual inside the linear
    layer's kernel (oneDNN's fused linear where the torch build has it, else the plain steps): the same
    function as the modules, which training and validation still run."""
    import bioworld.model.jepa as jepa
    from bioworld.model.config import JEPAConfig

    real = jepa._fused_linear()
    if fused and real is None:
        pytest.skip("this torch build has no fused oneDNN linear kernel")
    calls: list[str] = []
    monkeypatch.setattr(jepa, "_FUSED_LINEAR", [_Counted(real, calls) if fused else None])
    torch.manual_seed(0)
    blk = jepa._Block(32, 4, 2.0, 0.0).eval()
    readout = jepa.Readout(JEPAConfig(n_genes=23, n_entities=7, gene_feature_dim=3)).eval()
    for p in [*blk.parameters(), *readout.parameters()]:
        torch.nn.init.normal_(p, std=0.3)  # non-trivial biases and norms
    h, z = torch.randn(9, 13, 32), torch.randn(9, 7, 32)
    with torch.no_grad():
        ref_h, (ref_x, ref_s) = blk(h), readout(z)
    assert not calls  # outside inference mode: the modules
    with torch.inference_mode():
        got_h, (got_x, got_s) = blk(h), readout(z)
    # qkv, projection + residual, MLP in + GELU, MLP out + residual; the readout's two layers
    assert calls == (["none", "add", "gelu", "add", "gelu", "none"] if fused else [])
    torch.testing.assert_close(got_h, ref_h, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_x, ref_x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_s, ref_s)
    with torch.inference_mode():  # JEPA.readout (the engine's readout) takes the same path
        got_expr = readout.expression(z)
    assert calls[6:] == (["gelu", "none"] if fused else [])
    torch.testing.assert_close(got_expr, ref_x, atol=1e-5, rtol=1e-5)
    blk.train()
    with torch.inference_mode():
        blk(h)
    assert len(calls) == (8 if fused else 0)  # a module in training mode never takes the query path


def test_query_block_in_float64_takes_the_plain_steps():
    """The fused kernel was probed in float32 only: a float64 module answers queries with the plain steps."""
    import bioworld.model.jepa as jepa

    torch.manual_seed(0)
    blk = jepa._Block(16, 2, 2.0, 0.0).eval().double()
    h = torch.randn(4, 6, 16, dtype=torch.float64)
    with torch.no_grad():
        ref = blk(h)
    with torch.inference_mode():
        got = blk(h)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, ref, atol=1e-12, rtol=1e-12)
