"""The pure metrics of `pipeline.analysis` on inputs whose answer is known by construction or by hand."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.analysis.attention import attention_entropy, attention_on_mask, mean_attention_distance, patch_coverage
from pipeline.analysis.sae import TopKSAE, TopKSAEConfig, feature_overlap, train_sae
from pipeline.analysis.similarity import linear_cka
from pipeline.analysis.sparsity import active_share, hoyer_sparsity


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _gram_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Independent reference: CKA as HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with centred linear Gram matrices."""
    x, y = x.double(), y.double()
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n

    def hsic(gram_a: torch.Tensor, gram_b: torch.Tensor) -> torch.Tensor:
        return torch.trace(gram_a @ h @ gram_b @ h)

    gram_x, gram_y = x @ x.T, y @ y.T
    return float(hsic(gram_x, gram_y) / torch.sqrt(hsic(gram_x, gram_x) * hsic(gram_y, gram_y)))


# --- CKA ---------------------------------------------------------------------------------------------------------


def test_cka_of_a_representation_with_itself_is_one() -> None:
    x = torch.randn(200, 12, generator=_gen(0))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)


def test_cka_ignores_rotation_isotropic_scaling_and_offset() -> None:
    x = torch.randn(300, 10, generator=_gen(1), dtype=torch.float64)
    y = x @ torch.randn(10, 6, generator=_gen(2), dtype=torch.float64) + 0.3 * torch.randn(
        300, 6, generator=_gen(3), dtype=torch.float64
    )
    q, _ = torch.linalg.qr(torch.randn(10, 10, generator=_gen(4), dtype=torch.float64))
    base = linear_cka(x, y)
    assert 0.2 < base < 0.95  # a case where invariance is not trivially 0 = 0 or 1 = 1
    assert linear_cka(x @ q, y) == pytest.approx(base, abs=1e-10)
    assert linear_cka(x * 37.5 + 4.0, y) == pytest.approx(base, abs=1e-10)


def test_cka_changes_under_a_strongly_anisotropic_scaling() -> None:
    # For isotropic x, CKA(x, x·diag(s)) ≈ Σs² / (√d √Σs⁴) = 109 / (√10 · 100.04) ≈ 0.34 with s = (10, 1, ..., 1).
    x = torch.randn(2000, 10, generator=_gen(5))
    scales = torch.ones(10)
    scales[0] = 10.0
    assert linear_cka(x, x * scales) < 0.5


def test_cka_of_independent_features_is_small() -> None:
    x = torch.randn(2000, 10, generator=_gen(6))
    y = torch.randn(2000, 10, generator=_gen(7))
    assert linear_cka(x, y) < 0.1


def test_cka_matches_the_gram_matrix_hsic_formula() -> None:
    x = torch.randn(250, 20, generator=_gen(8))
    y = torch.tanh(x[:, :7] @ torch.randn(7, 9, generator=_gen(9))) + 0.5 * torch.randn(250, 9, generator=_gen(10))
    assert linear_cka(x, y) == pytest.approx(_gram_cka(x, y), abs=1e-6)


def test_cka_matches_ckatorch() -> None:
    import ckatorch  # a dev dependency: the registry's CKA package, as the reference

    x = torch.randn(250, 20, generator=_gen(11))
    y = x[:, :5] ** 2 + torch.randn(250, 5, generator=_gen(12))
    reference = float(ckatorch.cka_base(x, y, kernel="linear", unbiased=False))
    assert linear_cka(x, y) == pytest.approx(reference, abs=1e-6)


def test_cka_of_a_constant_representation_is_zero_not_nan() -> None:
    x = torch.randn(50, 4, generator=_gen(13))
    assert linear_cka(x, torch.full((50, 3), 2.5)) == 0.0
    assert linear_cka(torch.zeros(50, 2), x) == 0.0


def test_cka_rejects_mismatched_or_too_few_inputs() -> None:
    with pytest.raises(ValueError, match="same inputs"):
        linear_cka(torch.randn(10, 3), torch.randn(11, 3))
    with pytest.raises(ValueError, match="at least 2"):
        linear_cka(torch.randn(1, 3), torch.randn(1, 3))


# --- attention ---------------------------------------------------------------------------------------------------


def test_entropy_of_uniform_attention_is_log_keys_and_of_one_hot_is_zero() -> None:
    keys = 7
    uniform = torch.full((2, 1, 5, keys), 1.0 / keys)
    one_hot = torch.zeros(2, 1, 5, keys)
    one_hot[..., 3] = 1.0
    entropy = attention_entropy(torch.cat([uniform, one_hot], dim=1))
    assert entropy.shape == (2,)
    assert entropy[0].item() == pytest.approx(math.log(keys), abs=1e-6)
    assert entropy[1].item() == 0.0


def _attention_with_prefix(patch_rows: torch.Tensor, prefix: int, prefix_weight: float) -> torch.Tensor:
    """(patches, patches) patch-to-patch attention as one (1, 1, T, T) map, with mass put on the prefix tokens."""
    patches = patch_rows.shape[0]
    tokens = prefix + patches
    attn = torch.zeros(tokens, tokens)
    attn[:prefix] = 1.0 / tokens  # prefix queries: anything, they are excluded
    attn[prefix:, :prefix] = prefix_weight / prefix
    attn[prefix:, prefix:] = (1.0 - prefix_weight) * patch_rows
    return attn[None, None]


def _shift_attention(grid: tuple[int, int], step: tuple[int, int]) -> torch.Tensor:
    """Each patch attends to the patch ``step`` (rows, cols) away, or to itself where that falls off the grid."""
    gh, gw = grid
    rows = torch.zeros(gh * gw, gh * gw)
    for r in range(gh):
        for c in range(gw):
            tr, tc = r + step[0], c + step[1]
            target = tr * gw + tc if tr < gh and tc < gw else r * gw + c
            rows[r * gw + c, target] = 1.0
    return rows


def test_mean_distance_of_self_attention_is_zero() -> None:
    attn = _attention_with_prefix(torch.eye(6), prefix=2, prefix_weight=0.4)
    assert mean_attention_distance(attn, (2, 3), patch_pixels=16, prefix_tokens=2).tolist() == [0.0]


@pytest.mark.parametrize("prefix_weight", [0.0, 0.7])
def test_mean_distance_of_one_step_shifts_is_one_patch_where_the_neighbour_exists(prefix_weight: float) -> None:
    grid = (2, 3)  # not square, so rows and columns cannot be mixed up
    right = _attention_with_prefix(_shift_attention(grid, (0, 1)), prefix=1, prefix_weight=prefix_weight)
    down = _attention_with_prefix(_shift_attention(grid, (1, 0)), prefix=1, prefix_weight=prefix_weight)
    distance = mean_attention_distance(torch.cat([right, down], dim=1), grid, patch_pixels=14, prefix_tokens=1)
    # 4 of 6 patches have a right neighbour, 3 of 6 one below; the others attend to themselves (distance 0).
    assert distance.tolist() == pytest.approx([14 * 4 / 6, 14 * 3 / 6], abs=1e-5)


def test_mean_distance_of_uniform_attention_on_a_2x2_grid() -> None:
    # From any patch of a 2x2 grid the distances are 0, 1, 1 and √2 patches.
    expected = 16 * (2 + math.sqrt(2)) / 4
    for prefix_weight in (0.0, 0.9):
        attn = _attention_with_prefix(torch.full((4, 4), 0.25), prefix=1, prefix_weight=prefix_weight)
        distance = mean_attention_distance(attn.expand(3, 2, 5, 5), (2, 2), patch_pixels=16, prefix_tokens=1)
        assert distance.tolist() == pytest.approx([expected, expected], abs=1e-5)


def test_mean_distance_rejects_a_grid_that_does_not_match_the_tokens() -> None:
    with pytest.raises(ValueError, match="prefix tokens"):
        mean_attention_distance(torch.full((1, 1, 5, 5), 0.2), (2, 3), patch_pixels=16, prefix_tokens=1)


def _class_attention(rows: list[list[float]]) -> torch.Tensor:
    """(batch, heads=1, T, T) maps whose class-token row is given (class token first); other rows are uniform."""
    cls = torch.tensor(rows)
    tokens = cls.shape[1]
    attn = torch.full((cls.shape[0], 1, tokens, tokens), 1.0 / tokens)
    attn[:, 0, 0] = cls
    return attn


def test_attention_on_mask_all_on_object_none_on_object_and_a_mixed_case() -> None:
    coverage = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    on_object = _class_attention([[0.2, 0.5, 0.3, 0.0, 0.0], [0.6, 0.0, 0.0, 0.1, 0.3]])
    off_object = _class_attention([[0.2, 0.0, 0.0, 0.4, 0.4], [0.0, 0.7, 0.3, 0.0, 0.0]])
    share = attention_on_mask(torch.cat([on_object, off_object], dim=1), coverage, prefix_tokens=1)
    assert share.tolist() == pytest.approx([1.0, 0.0], abs=1e-6)

    # Patch attention renormalises to (0.5, 0.25, 0.125, 0.125) and (0.25, 0.25, 0.25, 0.25).
    partial = torch.tensor([[1.0, 0.5, 0.0, 0.25], [0.0, 1.0, 0.0, 0.0]])
    mixed = _class_attention([[0.2, 0.4, 0.2, 0.1, 0.1], [0.6, 0.1, 0.1, 0.1, 0.1]])
    first = 0.5 * 1.0 + 0.25 * 0.5 + 0.125 * 0.25
    assert attention_on_mask(mixed, partial, prefix_tokens=1).tolist() == pytest.approx([(first + 0.25) / 2], abs=1e-6)


def test_patch_coverage_of_a_hand_made_mask() -> None:
    mask = torch.tensor(
        [
            [1, 1, 0, 0, 1, 0],
            [1, 1, 0, 0, 0, 0],
            [0, 0, 0, 1, 1, 1],
            [0, 0, 1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    coverage = patch_coverage(mask[None], (2, 3))
    assert coverage.tolist() == [[1.0, 0.0, 0.25, 0.0, 0.75, 1.0]]
    with pytest.raises(ValueError, match="patch grid"):
        patch_coverage(mask[None], (3, 3))


# --- sparsity ----------------------------------------------------------------------------------------------------


def test_active_share_counts_entries_above_the_threshold() -> None:
    x = torch.tensor([[-1.0, 0.0], [0.5, 2.0]])
    assert active_share(x) == 0.5
    assert active_share(x, threshold=1.0) == 0.25


def test_hoyer_sparsity_of_known_vectors() -> None:
    assert hoyer_sparsity(torch.tensor([0.0, -3.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert hoyer_sparsity(torch.tensor([2.0, -2.0, 2.0, -2.0])) == pytest.approx(0.0, abs=1e-12)
    # (√4 − 2/√2) / (√4 − 1) = 2 − √2
    assert hoyer_sparsity(torch.tensor([1.0, 1.0, 0.0, 0.0])) == pytest.approx(2 - math.sqrt(2))
    batch = torch.tensor([[[5.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]], [[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]])
    assert hoyer_sparsity(batch) == pytest.approx(0.5)  # zero vectors left out: mean of 1 and 0
    assert hoyer_sparsity(torch.zeros(3, 4)) == 0.0
    assert hoyer_sparsity(torch.tensor([[4.0], [0.0]])) == 0.0


# --- sparse autoencoder ------------------------------------------------------------------------------------------


def _planted(seed: int, n: int = 20000, atoms: int = 32, width: int = 16, active: int = 3):
    """x = codes @ D for a random unit-norm dictionary D and exactly ``active`` positive codes per sample."""
    g = _gen(seed)
    dictionary = torch.randn(atoms, width, generator=g)
    dictionary /= torch.linalg.vector_norm(dictionary, dim=1, keepdim=True)
    chosen = torch.rand(n, atoms, generator=g).argsort(dim=1)[:, :active]
    codes = torch.zeros(n, atoms).scatter(1, chosen, 0.5 + torch.rand(n, active, generator=g))
    return codes @ dictionary, dictionary


def test_sae_recovers_a_planted_dictionary_and_stops_fitting_another_one() -> None:
    x, dictionary = _planted(seed=1)
    sae = train_sae(x * 40.0 + 3.0, TopKSAEConfig(features=64, k=4, steps=3000, lr=3e-3, seed=0))
    # Any scale and offset: the SAE standardises its inputs.
    fvu = sae.fraction_of_variance_unexplained(x * 40.0 + 3.0)
    # Not near 0: a linear encoder cannot undo the overlap of 32 atoms in 16 dimensions; even with the planted
    # dictionary as a fixed decoder the FVU stays at about 0.077, and training reaches about 0.07.
    assert fvu < 0.1
    best_cosine = (dictionary @ sae.decoder.detach()).max(dim=1).values
    assert (best_cosine > 0.9).float().mean().item() >= 0.9

    other, _ = _planted(seed=2)
    assert sae.fraction_of_variance_unexplained(other * 40.0 + 3.0) > max(0.4, 5 * fvu)

    codes = sae.encode(x[:100] * 40.0 + 3.0)
    assert codes.shape == (100, 64)
    assert int((codes > 0).sum(dim=1).max()) <= 4
    assert bool((codes >= 0).all())


def test_sae_is_deterministic_by_seed_and_reloads_from_its_state_dict() -> None:
    x, _ = _planted(seed=3, n=2000)
    config = TopKSAEConfig(features=32, k=3, steps=30, seed=5)
    first, second = train_sae(x, config), train_sae(x, config)
    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, second.state_dict()[name]), name
    other_seed = train_sae(x, TopKSAEConfig(features=32, k=3, steps=30, seed=6))
    assert not torch.equal(first.decoder, other_seed.decoder)

    reloaded = TopKSAE.from_state_dict(first.state_dict())
    assert torch.equal(reloaded.encode(x[:50]), first.encode(x[:50]))
    norms = torch.linalg.vector_norm(first.decoder.detach(), dim=0)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)


def test_active_features_and_their_overlap() -> None:
    x, _ = _planted(seed=4, n=2000)
    sae = train_sae(x, TopKSAEConfig(features=32, k=3, steps=200, seed=0))
    active = sae.active_features(x)
    assert active.dtype == torch.bool and active.shape == (32,)
    assert bool(active.any())
    assert not bool(sae.active_features(x, min_share=1.01).any())

    a = torch.tensor([True, True, False, False])
    assert feature_overlap(a, a) == 1.0
    assert feature_overlap(a, ~a) == 0.0
    assert feature_overlap(a, torch.tensor([True, False, True, False])) == pytest.approx(1 / 3)
