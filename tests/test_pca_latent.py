"""PCA against scikit-learn, principal angles against SciPy, the linear AE reaching the PCA
subspace by SVI, and the latent density models used to sample auto-encoders."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ppl_vae import ModelConfig, TrainConfig, build_model, fit, reconstruction_error
from ppl_vae.latent import (
    GaussianDensity,
    GMMDensity,
    PriorDensity,
    encode_dataset,
    sample_images,
)
from ppl_vae.pca import PCA, decoder_basis, linear_autoencoder, principal_angles

SHAPE = (1, 4, 5)  # D = 20


def _low_rank(n: int = 1000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images near a 6-dim affine subspace with distinct variances (a clear top-3 gap), and
    the subspace's orthonormal basis (D × 6)."""
    g = torch.Generator().manual_seed(seed)
    d = math.prod(SHAPE)
    basis = torch.linalg.qr(torch.randn(d, 6, generator=g)).Q
    scales = torch.tensor([3.0, 2.5, 2.0, 1.0, 0.7, 0.5])
    x = (torch.randn(n, 6, generator=g) * scales) @ basis.T + 0.5
    x = x + 0.1 * torch.randn(n, d, generator=g)
    return x.reshape(n, *SHAPE), basis


# ------------------------------------------------------------------------------------------------
# PCA
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3, 20])
def test_pca_matches_scikit_learn(k):
    from sklearn.decomposition import PCA as SkPCA

    x, _ = _low_rank(300)
    ours = PCA(k).fit(x)
    sk = SkPCA(k, svd_solver="full").fit(x.reshape(300, -1).double().numpy())
    np.testing.assert_allclose(ours.explained_variance.numpy(), sk.explained_variance_, rtol=1e-4)
    # same directions up to sign
    cos = (ours.components.double().T @ torch.from_numpy(sk.components_.T)).diagonal().abs()
    np.testing.assert_allclose(cos.numpy(), 1.0, atol=1e-4)
    rec_sk = sk.inverse_transform(sk.transform(x.reshape(300, -1).double().numpy()))
    np.testing.assert_allclose(
        ours.reconstruct(x).reshape(300, -1).numpy(), rec_sk, atol=1e-4, rtol=0
    )
    assert ours.explained_variance_ratio.sum().item() == pytest.approx(
        sk.explained_variance_ratio_.sum(), rel=1e-4
    )


def test_pca_interface_shapes_and_properties():
    x, _ = _low_rank(200)
    pca = PCA(3).fit(x)
    z = pca.encode(x)
    assert z.shape == (200, 3) and pca.decode(z).shape == x.shape
    torch.testing.assert_close(pca.components.T @ pca.components, torch.eye(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.mean(0), torch.zeros(3), atol=1e-4, rtol=0)  # centred codes
    assert torch.all(pca.explained_variance[:-1] >= pca.explained_variance[1:])
    # with every component the reconstruction is exact; the x_in argument is honoured
    full = PCA(20).fit(x)
    torch.testing.assert_close(full.reconstruct(x), x, atol=1e-4, rtol=0)
    torch.testing.assert_close(pca.reconstruct(x, x_in=x.flip(0)), pca.reconstruct(x.flip(0)))
    with pytest.raises(RuntimeError, match="not fitted"):
        PCA(2).encode(x)
    with pytest.raises(ValueError, match="exceeds"):
        PCA(21).fit(x)


def test_principal_angles_match_scipy_and_known_cases():
    from scipy.linalg import subspace_angles

    g = torch.Generator().manual_seed(0)
    a = torch.randn(30, 5, generator=g, dtype=torch.float64)
    b = torch.randn(30, 3, generator=g, dtype=torch.float64)
    expected = np.rad2deg(subspace_angles(a.numpy(), b.numpy()))
    np.testing.assert_allclose(principal_angles(a, b).numpy(), expected, atol=1e-8)
    np.testing.assert_allclose(principal_angles(b, a).numpy(), expected, atol=1e-8)
    # invariant to a change of basis; tiny angles are resolved (the sine formula, not arccos)
    mix = torch.randn(5, 5, generator=g, dtype=torch.float64)
    assert principal_angles(a, a @ mix).max() < 1e-6
    tilted = a + 1e-9 * torch.randn(30, 5, generator=g, dtype=torch.float64)
    assert 0 < principal_angles(a, tilted).max() < 1e-5
    e = torch.eye(4, dtype=torch.float64)
    np.testing.assert_allclose(principal_angles(e[:, :2], e[:, 2:]).numpy(), [90.0, 90.0])
    half = torch.tensor([[1.0], [1.0], [0.0], [0.0]], dtype=torch.float64)
    np.testing.assert_allclose(principal_angles(e[:, :1], half).numpy(), [45.0])


@pytest.fixture
def one_thread():
    """Tiny matrices: one thread is faster than two, and much faster on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_linear_autoencoder_trained_by_svi_reaches_the_pca_subspace(one_thread):
    """Baldi & Hornik: the linear AE's optimum spans the top-k principal subspace."""
    k = 3
    x, _ = _low_rank(1000)
    pca = PCA(k).fit(x)
    ae = linear_autoencoder(SHAPE, k, variance=1.0, data_mean=x.mean(0))
    # Two Adam stages through the ordinary SVI path (fit restarts Adam, keeps the weights).
    for lr, epochs in [(1e-2, 15), (1e-3, 5)]:
        fit(ae, x, TrainConfig(epochs=epochs, batch_size=100, lr=lr, device="cpu"), progress=False)
    pca_mse = float(((pca.reconstruct(x) - x) ** 2).mean())
    ae_mse = reconstruction_error(ae, x)
    assert ae_mse <= 1.02 * pca_mse
    assert ae_mse >= pca_mse * (1 - 1e-4)  # PCA is optimal on its own training data
    assert principal_angles(decoder_basis(ae), pca.components).max() < 5.0


def test_decoder_basis_rejects_non_linear_decoders():
    model = build_model(ModelConfig(latent_dim=2, hidden=(8,)), SHAPE)
    with pytest.raises(ValueError, match="single linear layer"):
        decoder_basis(model)
    lin = linear_autoencoder(SHAPE, 2)
    assert decoder_basis(lin).shape == (20, 2)


# ------------------------------------------------------------------------------------------------
# Latent densities
# ------------------------------------------------------------------------------------------------


def _codes(n: int = 4000, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.5, 0.0], [0.2, -0.3, 0.3]])
    return torch.randn(n, 3, generator=g) @ a.T + torch.tensor([1.0, -2.0, 0.5])


@pytest.mark.parametrize("full", [True, False])
def test_gaussian_density_fits_mean_and_covariance(full):
    z = _codes()
    dens = GaussianDensity(full=full).fit(z)
    torch.testing.assert_close(dens.mean, z.mean(0))
    cov = torch.cov(z.T)
    expected = cov if full else torch.diag(cov.diagonal())
    torch.testing.assert_close(dens.covariance, expected, atol=1e-5, rtol=1e-4)
    s = dens.sample(50_000, generator=torch.Generator().manual_seed(0))
    assert s.shape == (50_000, 3) and s.dtype == z.dtype
    torch.testing.assert_close(s.mean(0), dens.mean, atol=0.03, rtol=0)
    torch.testing.assert_close(torch.cov(s.T), dens.covariance, atol=0.03, rtol=0)
    ref = torch.distributions.MultivariateNormal(dens.mean, dens.covariance)
    torch.testing.assert_close(dens.log_prob(z[:10]), ref.log_prob(z[:10]), atol=1e-4, rtol=1e-4)


def test_densities_are_reproducible_with_a_generator():
    z = _codes(500)
    for dens in (GaussianDensity().fit(z), GMMDensity(3, seed=0).fit(z)):
        a = dens.sample(7, generator=torch.Generator().manual_seed(1))
        b = dens.sample(7, generator=torch.Generator().manual_seed(1))
        assert torch.equal(a, b)
        assert not torch.equal(a, dens.sample(7, generator=torch.Generator().manual_seed(2)))


def test_gaussian_density_survives_rank_deficient_codes():
    z = torch.randn(50, 2) @ torch.randn(2, 5)  # rank 2 in 5 dimensions
    s = GaussianDensity().fit(z).sample(10)
    assert s.shape == (10, 5) and torch.isfinite(s).all()


def test_gmm_density_finds_clusters_and_matches_sklearn_log_prob():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[-4.0, 0.0], [4.0, 1.0]])
    z = torch.cat([centres[0] + 0.5 * torch.randn(600, 2, generator=g),
                   centres[1] + torch.randn(400, 2, generator=g)])  # fmt: skip
    dens = GMMDensity(2, seed=0).fit(z)
    assert dens.converged
    order = dens.means[:, 0].argsort()
    torch.testing.assert_close(dens.means[order], centres, atol=0.2, rtol=0)
    torch.testing.assert_close(dens.weights[order], torch.tensor([0.6, 0.4]), atol=0.02, rtol=0)
    s = dens.sample(4000, generator=torch.Generator().manual_seed(0))
    assert s.shape == (4000, 2)
    assert (s[:, 0] > 0).float().mean().item() == pytest.approx(0.4, abs=0.04)
    expected = dens.gmm.score_samples(z[:20].double().numpy())
    np.testing.assert_allclose(dens.log_prob(z[:20]).numpy(), expected, rtol=1e-4)


@pytest.mark.parametrize("cov", ["full", "diag", "tied", "spherical"])
def test_gmm_every_covariance_type_samples(cov):
    z = _codes(400)
    dens = GMMDensity(3, covariance_type=cov, seed=0).fit(z)
    assert dens.covariances.shape == (3, 3, 3)
    s = dens.sample(11, generator=torch.Generator().manual_seed(0))
    assert s.shape == (11, 3) and torch.isfinite(s).all()


def test_prior_density_samples_a_vae_and_refuses_a_flat_prior():
    vae = build_model(ModelConfig(latent_dim=4, hidden=(8,)), SHAPE)
    dens = PriorDensity(vae)
    a = dens.sample(5, generator=torch.Generator().manual_seed(0))
    assert a.shape == (5, 4)
    assert torch.equal(a, dens.sample(5, generator=torch.Generator().manual_seed(0)))
    state = torch.get_rng_state()
    dens.sample(3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is left alone
    assert sample_images(vae, dens, 6).shape == (6, *SHAPE)
    ae = build_model(ModelConfig(latent_dim=4, hidden=(8,), guide="delta", prior="flat"), SHAPE)
    with pytest.raises(ValueError, match="cannot be sampled"):
        PriorDensity(ae)


def test_sampling_an_autoencoder_through_its_codes():
    x, _ = _low_rank(300)
    x = x.clamp(0, 1)
    ae = build_model(ModelConfig(latent_dim=2, hidden=(8,), guide="delta", prior="flat"), SHAPE)
    ae.train()
    codes = encode_dataset(ae, x, batch_size=64)
    assert ae.training  # mode restored
    with torch.no_grad():
        torch.testing.assert_close(codes, ae.encode(x))
    for dens in (GaussianDensity(full=False), GaussianDensity(), GMMDensity(2)):
        images = sample_images(ae, dens.fit(codes), 9, generator=torch.Generator().manual_seed(0))
        assert images.shape == (9, *SHAPE) and not images.requires_grad
    pca = PCA(2).fit(x)  # PCA decodes the same way
    assert sample_images(pca, GaussianDensity().fit(pca.encode(x)), 4).shape == (4, *SHAPE)


def test_density_errors():
    with pytest.raises(RuntimeError, match="not fitted"):
        GaussianDensity().sample(3)
    with pytest.raises(RuntimeError, match="not fitted"):
        GMMDensity(2).sample(3)
    with pytest.raises(ValueError, match="at least"):
        GMMDensity(5).fit(torch.randn(3, 2))
    with pytest.raises(ValueError, match="NaN"):
        GaussianDensity().fit(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="positive"):
        sample_images(PCA(1).fit(torch.rand(5, 2)), GaussianDensity().fit(torch.randn(5, 1)), 0)
