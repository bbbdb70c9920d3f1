"""Appendix B.5: how well a trained layer's features predict recorded neural responses.

Given images, their recorded responses R [n_images, n_sites] and category labels:

1. features F = the named module's output for each image, flattened [n_images, n_features];
2. split 75 / 25 within each category (a seeded permutation per category; B.5's split);
3. fit one PLS regression (scikit-learn ``PLSRegression``, ``n_components``, no scaling, all
   sites at once, as Brain-Score's neural predictivity does) from the training images' F to R;
4. per site, Pearson r between prediction and response on the held-out images; the median over sites.

With ``trials`` [n_repeats, n_images, n_sites] the r is noise-ceiling corrected: per site, the
split-half reliability of the trial mean on the held-out images, rho = 2 r_half / (1 + r_half)
(Spearman-Brown; r_half the Pearson r between the means of two random halves of the repeats,
averaged over ``splits`` seeded splits), and r_corrected = r / sqrt(rho) (Spearman's correction
for attenuation: a perfect model correlates sqrt(rho) with noisy data). Sites with rho <= 0
have no corrected r (NaN) and are left out of its median, counted in ``unreliable_sites``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from neural_alignment.core.errors import UserError, did_you_mean

REQUIRED_KEYS = ("images", "responses", "labels")
TRAIN_FRACTION = 0.75


@dataclass(frozen=True)
class NeuralData:
    """Images [n, ...], responses [n, sites], labels [n] and optional trials [repeats, n, sites]."""

    images: np.ndarray
    responses: np.ndarray
    labels: np.ndarray
    trials: np.ndarray | None = None


def load_neural_data(path: str | Path) -> NeuralData:
    """Read and check an npz with ``images``, ``responses``, ``labels`` (and optionally ``trials``);
    a missing file or key, or a shape that does not fit, is a ``UserError`` naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"neural data file {path} does not exist (an .npz with {', '.join(REQUIRED_KEYS)})")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is not a readable .npz file ({exc})") from None
    missing = [key for key in REQUIRED_KEYS if key not in arrays]
    if missing:
        raise UserError(
            f"{path} lacks {', '.join(missing)}; it has {', '.join(arrays) or 'nothing'} "
            f"(needed: {', '.join(REQUIRED_KEYS)}, optional: trials)"
        )
    data = NeuralData(arrays["images"], arrays["responses"], arrays["labels"], arrays.get("trials"))
    n = len(data.images)
    if data.responses.ndim != 2 or len(data.responses) != n:
        raise UserError(f"{path}: responses must be [n_images={n}, n_sites], got shape {data.responses.shape}")
    if data.labels.shape != (n,):
        raise UserError(f"{path}: labels must be [n_images={n}], got shape {data.labels.shape}")
    if data.trials is not None and (
        data.trials.ndim != 3 or data.trials.shape[1:] != data.responses.shape or data.trials.shape[0] < 2
    ):
        raise UserError(
            f"{path}: trials must be [n_repeats >= 2, {n}, {data.responses.shape[1]}], got shape {data.trials.shape}"
        )
    return data


def layer_features(model: nn.Module, layer: str, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The output of ``model``'s module named ``layer`` for each image, flattened, in eval mode."""
    modules = dict(model.named_modules())
    if layer not in modules or layer == "":
        names = [name for name in modules if name]
        raise UserError(f"no layer {layer!r} in the model; layers: {', '.join(names)}.{did_you_mean(layer, names)}")
    parameter = next(model.parameters())
    x = torch.as_tensor(images).to(parameter.device, parameter.dtype)
    captured: list[torch.Tensor] = []
    handle = modules[layer].register_forward_hook(lambda module, args, out: captured.append(out.detach().flatten(1)))
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(x), batch_size):
                model(x[start : start + batch_size])
    except RuntimeError as exc:
        raise UserError(f"the model cannot take images of shape {tuple(x.shape[1:])} ({exc})") from None
    finally:
        handle.remove()
        model.train(training)
    return torch.cat(captured).double().cpu().numpy()


def category_split(
    labels: np.ndarray, seed: int = 0, fraction: float = TRAIN_FRACTION
) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices: per category a seeded permutation, its first round(fraction * n) train."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for category in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == category))
        cut = round(fraction * len(members))
        train.append(members[:cut])
        test.append(members[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def pearson_per_site(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r between column j of a and column j of b, per j (NaN where a column is constant)."""
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    denominator = np.sqrt((a**2).sum(axis=0) * (b**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (a * b).sum(axis=0) / denominator, np.nan)


def split_half_reliability(trials: np.ndarray, splits: int = 10, seed: int = 0) -> np.ndarray:
    """Per site, the Spearman-Brown corrected split-half reliability of the trial mean, averaged over splits.

    ``trials`` is [repeats, images, sites]; each split halves the repeats at random (seeded).
    """
    rng = np.random.default_rng(seed)
    repeats = trials.shape[0]
    values = []
    for _ in range(splits):
        order = rng.permutation(repeats)
        half = pearson_per_site(trials[order[: repeats // 2]].mean(0), trials[order[repeats // 2 :]].mean(0))
        values.append(2 * half / (1 + half))
    return np.mean(values, axis=0)


@dataclass(frozen=True)
class FitResult:
    """Per-site held-out r (and noise-corrected r, reliability when trials were given), with medians."""

    r: np.ndarray
    n_train: int
    n_test: int
    n_components: int
    reliability: np.ndarray | None = None

    @property
    def median_r(self) -> float:
        """The median over sites of the held-out Pearson r (a site whose r is NaN left out)."""
        return float(np.nanmedian(self.r))

    @property
    def corrected_r(self) -> np.ndarray | None:
        """Per site r / sqrt(rho), rho the Spearman-Brown split-half reliability; NaN where rho <= 0."""
        if self.reliability is None:
            return None
        with np.errstate(invalid="ignore"):
            return np.where(self.reliability > 0, self.r / np.sqrt(np.clip(self.reliability, 1e-300, None)), np.nan)

    @property
    def median_corrected_r(self) -> float | None:
        """The median of :attr:`corrected_r` over the sites that have one (rho > 0)."""
        corrected = self.corrected_r
        return None if corrected is None else float(np.nanmedian(corrected))

    @property
    def unreliable_sites(self) -> int:
        """How many sites have rho <= 0 (no corrected r)."""
        return 0 if self.reliability is None else int((~(self.reliability > 0)).sum())

    def as_dict(self) -> dict:
        """The result as plain JSON types (NaN r as null): what ``neural-fit --json`` writes."""
        out = {
            "n_sites": len(self.r),
            "n_train": self.n_train,
            "n_test": self.n_test,
            "n_components": self.n_components,
            "median_r": self.median_r,
            "r": [None if np.isnan(v) else float(v) for v in self.r],
        }
        if self.reliability is not None:
            out.update(
                median_corrected_r=self.median_corrected_r,
                unreliable_sites=self.unreliable_sites,
                reliability=[float(v) for v in self.reliability],
            )
        return out


def fit(
    features: np.ndarray,
    responses: np.ndarray,
    labels: np.ndarray,
    trials: np.ndarray | None = None,
    n_components: int = 25,
    seed: int = 0,
) -> FitResult:
    """Steps 2-4 of the module docstring on given features; ``n_components`` is capped at the
    number of features and of training images."""
    from sklearn.cross_decomposition import PLSRegression

    if n_components < 1:
        raise UserError(f"n_components must be >= 1, got {n_components}")
    train, test = category_split(labels, seed)
    if len(test) < 2 or len(train) < 2:
        raise UserError(
            f"the 75/25 split within categories leaves {len(train)} train / {len(test)} test images; "
            "need at least 2 of each"
        )
    components = min(n_components, features.shape[1], len(train) - 1)
    model = PLSRegression(n_components=components, scale=False)
    model.fit(features[train], responses[train])
    r = pearson_per_site(model.predict(features[test]), responses[test])
    reliability = None if trials is None else split_half_reliability(trials[:, test], seed=seed)
    return FitResult(r, len(train), len(test), components, reliability)
