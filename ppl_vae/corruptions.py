"""Image corruptions x → x̃ for the denoising auto-encoder (PSNR, which scores the clean-up, lives
in :mod:`ppl_vae.metrics` and is re-exported here).

A denoising AE's guide encodes a corrupted copy x̃ while its model scores the clean x (see
:mod:`ppl_vae.model`). The corruptions here are small callables with one signature::

    x_tilde = corruption(x, generator=None)

``x`` is a batch ``(..., C, H, W)`` (any leading dims; noise, dropout and salt-and-pepper also
take any shape). The result has x's shape, dtype and device and ``x`` is never modified in place.

Randomness, in order of precedence:

1. ``generator=`` passed to the call (what :func:`corrupt` does to fix a test set's corruption);
2. the corruption's own generator, made lazily on x's device from ``seed=`` — so that
   :func:`ppl_vae.train.fit`, which calls ``corruption(x)`` with no generator, is reproducible;
3. torch's global RNG when neither is given.

Corruptions compose (:class:`Compose`, or ``"dropout:0.5+blur:4"`` in :func:`make_corruption`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torchvision.transforms import functional as TF

from .metrics import psnr, reconstruction_psnr

__all__ = [
    "CORRUPTIONS",
    "BlockMask",
    "Compose",
    "Corruption",
    "GaussianBlur",
    "GaussianNoise",
    "Identity",
    "PixelDropout",
    "SaltAndPepper",
    "corrupt",
    "make_corruption",
    "psnr",
    "reconstruction_psnr",
]


class Corruption:
    """Base class: holds the optional seed and draws random numbers reproducibly.

    Subclasses implement :meth:`apply` ``(x, generator) -> x̃``; ``generator`` is None only when
    no seed was set and none was passed (then torch's global RNG is used).
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"corruptions take floating-point tensors, got {_describe(x)}")
        if generator is None:
            generator = self._own_generator(x.device)
        return self.apply(x, generator)

    def apply(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover - abstract

    def reset(self) -> None:
        """Restart the own generator from ``seed`` (the next call repeats the first one)."""
        self._generators.clear()

    def get_state(self) -> dict[str, torch.Tensor]:
        """States of the own generators by device (``fit`` stores them in its checkpoints)."""
        return {str(dev): gen.get_state().cpu() for dev, gen in self._generators.items()}

    def set_state(self, state: dict[str, torch.Tensor]) -> None:
        """Continue the own generators from :meth:`get_state`'s states (a resumed DAE then sees
        the corruptions an uninterrupted run would have drawn). Needs a seed."""
        if state and self.seed is None:
            raise ValueError("cannot restore the generator state of a corruption without a seed")
        self._generators.clear()
        for dev, gen_state in state.items():
            gen = self._own_generator(torch.device(dev))
            assert gen is not None
            gen.set_state(gen_state.to(gen.get_state().device))

    def _own_generator(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None:
            return None
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[device]

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({params})"

    def _params(self) -> dict[str, object]:
        return {"seed": self.seed} if self.seed is not None else {}


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__


def _rand(
    shape: Sequence[int],
    generator: torch.Generator | None,
    like: torch.Tensor,
    normal: bool = False,
) -> torch.Tensor:
    """Uniforms (or standard normals) drawn on the generator's device, so a CPU generator can
    drive GPU data, then moved to ``like``'s device in ``like``'s dtype."""
    device = generator.device if generator is not None else like.device
    draw = torch.randn if normal else torch.rand
    return draw(tuple(shape), generator=generator, device=device, dtype=like.dtype).to(like.device)


def _check_image(x: torch.Tensor, what: str) -> tuple[int, int]:
    if x.dim() < 3:
        raise ValueError(f"{what} needs images of shape (..., C, H, W), got shape {tuple(x.shape)}")
    return int(x.shape[-2]), int(x.shape[-1])


def _check_probability(p: float, name: str) -> float:
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
    return p


class Identity(Corruption):
    """x̃ = x (a copy): the plain AE, written as a corruption so that code paths stay uniform."""

    def apply(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return x.clone()


class GaussianNoise(Corruption):
    """Additive noise x̃ = x + σ ε, ε ~ N(0, I).

    ``clip=True`` clamps x̃ to ``[0, 1]`` (the grey-level range); it is off by default so that x̃ − x
    has variance exactly σ² — the encoder does not need inputs inside the likelihood's support.
    """

    def __init__(self, sigma: float, clip: bool = False, seed: int | None = None) -> None:
        super().__init__(seed)
        self.sigma = float(sigma)
        if not self.sigma >= 0 or not math.isfinite(self.sigma):
            raise ValueError(f"noise sigma must be a finite number >= 0, got {sigma}")
        self.clip = bool(clip)

    def apply(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        out = x + self.sigma * _rand(x.shape, generator, x, normal=True)
        return out.clamp(0.0, 1.0) if self.clip else out

    def _params(self) -> dict[str, object]:
        return {"sigma": self.sigma, "clip": self.clip, **super()._params()}


class PixelDropout(Corruption):
    """Each pixel is set to ``fill`` (black) independently with probability ``p``.

    A pixel is one spatial position: for images ``(..., C, H, W)`` all channels of a dropped pixel
    are dropped together (inputs of fewer than 3 dims are masked element-wise). Unlike
    ``nn.Dropout`` the survivors are *not* rescaled by 1/(1−p): this is image damage, not a
    regulariser, and the lecture's 50% / 90% examples show plain black pixels.
    """

    def __init__(self, p: float, fill: float = 0.0, seed: int | None = None) -> None:
        super().__init__(seed)
        self.p = _check_probability(p, "dropout fraction p")
        self.fill = float(fill)

    def apply(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        shape = (*x.shape[:-3], 1, *x.shape[-2:]) if x.dim() >= 3 else x.shape
        drop = _rand(shape, generator, x) < self.p
        return x.masked_fill(drop, self.fill)

    def _params(self) -> dict[str, object]:
        return {"p": self.p, "fill": self.fill, **super()._params()}


class SaltAndPepper(Corruption):
    """A fraction ``p`` of pixels is replaced: by ``high`` (salt) with probability ``salt``,
    else by ``low`` (pepper). Channels of a pixel are replaced together, as in PixelDropout."""

    def __init__(
        self,
        p: float,
        salt: float = 0.5,
        low: float = 0.0,
        high: float = 1.0,
        seed: int | None = None,
    ) -> None:
        super().__init__(seed)
        self.p = _check_probability(p, "salt-and-pepper fraction p")
        self.salt = _check_probability(salt, "salt share")
        self.low, self.high = float(low), float(high)

    def apply(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        shape = (*x.shape[:-3], 1, *x.shape[-2:]) if x.dim() >= 3 else x.shape
        u = _rand(shape, generator, x)
        # One uniform decides both: u < p·salt → salt, p·salt ≤ u < p → pepper.
        salt = u < self.p * self.salt
        pepper = (u >= self.p * self.salt) & (u < self.p)
        return x.masked_fill(salt, self.high).masked_fill(pepper, self.low)

    def _params(self) -> dict[str, object]:
        return {"p": self.p, "salt": self.salt, **super()._params()}


class GaussianBlur(Corruption):
    """Gaussian blur of standard deviation ``sigma`` pixels (torchvision's ``gaussian_blur``).

    The kernel is ``2·ceil(3σ) + 1`` wide (±3σ, 99.7% of the mass), cut down to the largest odd
    size that fits the image (25 for the lecture's σ = 4 on 28×28). torchvision pads by
    reflection and normalises the kernel, so a constant image stays constant. σ = 0 is the
    identity. Deterministic: the generator is ignored.
    """

    def __init__(self, sigma: float, kernel_size: int | None = None) -> None:
        super().__init__(None)
        self.sigma = float(sigma)
        if not self.sigma >= 0 or not math.isfinite(self.sigma):
            raise ValueError(f"blur sigma must be a finite number >= 0, got {sigma}")
        if kernel_size is not None and (kernel_size < 1 or kernel_size % 2 == 0):
            raise ValueError(f"blur kernel_size must be a positive odd integer, got {kernel_size}")
        self.kernel_size = kernel_size

    def kernel_for(self, height: int, width: int) -> tuple[int, int]:
        """The (kx, ky) kernel size used on ``height × width`` images."""
        k = self.kernel_size or 2 * math.ceil(3 * self.sigma) + 1
        sizes = []
        for n in (width, height):  # torchvision takes (x, y)
            largest_odd = n if n % 2 else n - 1
            sizes.append(max(1, min(k, largest_odd)))
        return sizes[0], sizes[1]

    def apply(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        h, w = _check_image(x, "blur")
        if self.sigma == 0:
            return x.clone()
        kx, ky = self.kernel_for(h, w)
        flat = x.reshape(-1, *x.shape[-3:])
        out = TF.gaussian_blur(flat, [kx, ky], [self.sigma, self.sigma])
        return out.reshape(x.shape)

    def _params(self) -> dict[str, object]:
        return {"sigma": self.sigma, "kernel_size": self.kernel_size}


class BlockMask(Corruption):
    """One ``size`` × ``size`` square per image set to ``fill``, at a uniformly random position
    that keeps the whole block inside the image (top-left corner in ``[0, H−h] × [0, W−w]``).

    ``size`` may be an int or ``(h, w)``. A block larger than the image is an error.
    """

    def __init__(
        self, size: int | tuple[int, int], fill: float = 0.0, seed: int | None = None
    ) -> None:
        super().__init__(seed)
        hw = (size, size) if isinstance(size, int) else tuple(size)
        if len(hw) != 2 or any(int(s) != s or s < 1 for s in hw):
            raise ValueError(f"block size must be a positive int or (h, w) pair, got {size!r}")
        self.size = (int(hw[0]), int(hw[1]))
        self.fill = float(fill)

    def apply(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        h, w = _check_image(x, "block mask")
        bh, bw = self.size
        if bh > h or bw > w:
            raise ValueError(f"block {bh}×{bw} is larger than the {h}×{w} images")
        n = math.prod(x.shape[:-3])
        top = (_rand((n,), generator, x) * (h - bh + 1)).floor().long().clamp_max(h - bh)
        left = (_rand((n,), generator, x) * (w - bw + 1)).floor().long().clamp_max(w - bw)
        rows = torch.arange(h, device=x.device)
        cols = torch.arange(w, device=x.device)
        in_rows = (rows >= top[:, None]) & (rows < top[:, None] + bh)  # (n, H)
        in_cols = (cols >= left[:, None]) & (cols < left[:, None] + bw)  # (n, W)
        mask = (in_rows[:, :, None] & in_cols[:, None, :]).reshape(*x.shape[:-3], 1, h, w)
        return x.masked_fill(mask, self.fill)

    def _params(self) -> dict[str, object]:
        return {"size": self.size, "fill": self.fill, **super()._params()}


class Compose(Corruption):
    """Apply corruptions in order. With ``seed`` the parts share this object's generator, so the
    whole chain is reproducible from one number; a ``generator`` passed to the call wins."""

    def __init__(self, corruptions: Sequence[Corruption], seed: int | None = None) -> None:
        super().__init__(seed)
        self.corruptions = list(corruptions)
        if not self.corruptions:
            raise ValueError("Compose needs at least one corruption")

    def apply(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        for c in self.corruptions:
            x = c(x, generator)
        return x

    def reset(self) -> None:
        super().reset()
        for c in self.corruptions:
            c.reset()

    def get_state(self) -> dict[str, torch.Tensor]:
        """This object's generators and each part's (keys ``"part{i}|{device}"``)."""
        state = super().get_state()
        for i, c in enumerate(self.corruptions):
            state.update({f"part{i}|{dev}": s for dev, s in c.get_state().items()})
        return state

    def set_state(self, state: dict[str, torch.Tensor]) -> None:
        super().set_state({k: v for k, v in state.items() if "|" not in k})
        for i, c in enumerate(self.corruptions):
            prefix = f"part{i}|"
            c.set_state({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})

    def __repr__(self) -> str:
        inner = ", ".join(map(repr, self.corruptions))
        seed = f", seed={self.seed}" if self.seed is not None else ""
        return f"Compose([{inner}]{seed})"


def _block(size: float, width: float | None = None, fill: float = 0.0, **kw: object) -> BlockMask:
    for s in (size, width):
        if s is not None and int(s) != s:
            raise ValueError(f"block size must be an integer number of pixels, got {s}")
    shape = int(size) if width is None else (int(size), int(width))
    return BlockMask(shape, fill=fill, **kw)  # type: ignore[arg-type]


def _noise(sigma: float, clip: float = 0.0, **kw: object) -> GaussianNoise:
    return GaussianNoise(sigma, clip=bool(clip), **kw)  # type: ignore[arg-type]


def _blur(sigma: float, kernel_size: float | None = None, seed: object = None) -> GaussianBlur:
    if kernel_size is not None and int(kernel_size) != kernel_size:
        raise ValueError(f"blur kernel_size must be an integer, got {kernel_size}")
    return GaussianBlur(sigma, None if kernel_size is None else int(kernel_size))


#: Spec name → factory taking the spec's numbers (positional, then ``key=value``) and ``seed=``.
#: Spec forms: ``noise:0.3`` (σ; ``clip=1`` to clamp), ``dropout:0.5`` (p), ``blur:4`` (σ),
#: ``block:16`` or ``block:16,8`` (h, w), ``saltpepper:0.1`` (p; ``salt=0.5``), ``none``.
CORRUPTIONS: dict[str, Callable[..., Corruption]] = {
    "noise": _noise,
    "dropout": PixelDropout,
    "blur": _blur,
    "block": _block,
    "saltpepper": SaltAndPepper,
    "none": lambda seed=None: Identity(seed),
}
_ALIASES = {"gaussian": "noise", "salt-pepper": "saltpepper", "sp": "saltpepper", "mask": "block"}


def _parse_part(part: str, seed: int | None) -> Corruption:
    name, _, arg_text = part.strip().partition(":")
    name = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if name not in CORRUPTIONS:
        raise ValueError(
            f"unknown corruption {name!r} in {part!r}; choose from {sorted(CORRUPTIONS)} "
            "(e.g. 'dropout:0.5', 'noise:0.3', 'blur:4', 'block:16', 'saltpepper:0.1', "
            "joined with '+')"
        )
    args: list[float] = []
    kwargs: dict[str, float] = {}
    for item in filter(None, (a.strip() for a in arg_text.split(","))):
        key, eq, value = item.partition("=")
        try:
            number = float(value if eq else key)
        except ValueError:
            raise ValueError(f"corruption {part!r}: {item!r} is not a number") from None
        if eq:
            kwargs[key.strip()] = number
        elif kwargs:
            raise ValueError(f"corruption {part!r}: positional value after key=value")
        else:
            args.append(number)
    try:
        return CORRUPTIONS[name](*args, **kwargs, seed=seed)
    except TypeError as e:
        raise ValueError(f"corruption {part!r}: bad parameters ({e})") from None


def make_corruption(spec: str, seed: int | None = None) -> Corruption:
    """Parse ``"dropout:0.5+blur:4"`` into a corruption (a :class:`Compose` for several parts).

    ``seed`` seeds the result's own generator (see the module docstring). Unknown names, missing
    or non-numeric parameters and out-of-range values raise ``ValueError`` with the spec quoted.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("empty corruption spec; use e.g. 'dropout:0.5' or 'none'")
    parts = [p for p in spec.split("+") if p.strip()]
    if len(parts) == 1:
        return _parse_part(parts[0], seed)
    return Compose([_parse_part(p, None) for p in parts], seed=seed)


def corrupt(
    x: torch.Tensor, corruption: Callable[..., torch.Tensor], seed: int = 0
) -> torch.Tensor:
    """Corrupt a whole (test) set with a fresh generator seeded by ``seed``.

    The same ``seed`` gives the same x̃ whatever the corruption object's own state, so every
    model in a comparison is scored on identical corrupted images.
    """
    gen = torch.Generator(device=x.device).manual_seed(seed)
    return corruption(x, generator=gen)
