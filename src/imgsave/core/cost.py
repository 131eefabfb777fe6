"""What a run costs, before and after: the unit price of a mode, an estimate, and `--max-cost`
turned into the number of images it allows. Pure arithmetic on exact decimals: a price of 0.04
is four hundredths, never 0.04000000000000000083 of a float, and a budget is rounded down, so
that no run is allowed to spend a fraction of a cent more than it was given.

Prices are configuration (`[provider] price`, `batch_discount`, `currency`), never hard-coded:
what an image costs depends on the model, its size and quality and the account's contract, and
changes without a release of imgsave."""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction

from imgsave.core.settings import ProviderSettings
from imgsave.errors import UsageError

SYNC = "sync"
BATCH = "batch"
# What `--max-cost` may be: a trillion, in steps of 1e-12.
MAX_AMOUNT = Decimal(10) ** 12
SMALLEST = Decimal("1e-12")


@dataclass(frozen=True)
class Pricing:
    """What one image costs: `price` per image bought synchronously (None: no price set), times
    `batch_discount` through the provider's Batch API, in `currency` (a label)."""

    price: Decimal | None
    batch_discount: Decimal = Decimal("0.5")
    currency: str = "USD"

    @classmethod
    def of(cls, provider: ProviderSettings) -> Pricing:
        """From the settings' numbers, as the settings file spelled them (TOML's 0.04 is the
        float nearest 0.04; its shortest spelling is "0.04" again)."""
        price = None if provider.price is None else decimal_of(provider.price)
        return cls(price, decimal_of(provider.batch_discount), provider.currency)

    def unit(self, mode: str) -> Decimal | None:
        """The price of one image in `mode` (sync or batch); None without a price."""
        if self.price is None:
            return None
        return self.price * self.batch_discount if mode == BATCH else self.price

    def estimate(self, images: int, mode: str) -> Decimal | None:
        unit = self.unit(mode)
        return None if unit is None else unit * images

    def cost_json(self, images: int, mode: str) -> dict[str, object]:
        """The `cost` object of a run's JSON: what `images` bought in `mode` cost."""
        return {"estimated": amount_json(self.estimate(images, mode)), "currency": self.currency}


def decimal_of(number: float | int) -> Decimal:
    """A number from the settings file as the decimal it was written as."""
    return Decimal(str(number))


def parse_amount(text: str, what: str = "--max-cost") -> Decimal:
    """A positive amount of money as given on the command line: `5`, `12.50`, `0.8`."""
    try:
        amount = Decimal(text.strip())
    except InvalidOperation:
        amount = None
    # Bounded, so that the exact arithmetic below stays small: 1e999999999 would be a number
    # of a billion digits.
    if (
        amount is None
        or not amount.is_finite()
        or not 0 < amount <= MAX_AMOUNT
        or amount != amount.quantize(SMALLEST)
    ):
        raise UsageError(
            f"{what} must be a positive amount in the price's currency, such as 12.50, at "
            f"most {MAX_AMOUNT:,} with at most 12 decimals (not {text!r})"
        )
    return amount


def images_within(max_cost: Decimal, unit: Decimal) -> int | None:
    """The most images whose cost at `unit` each stays within `max_cost`, rounded down; None
    (no bound) for images that cost nothing. Exact: Decimal's division rounds to its precision,
    and a quotient just under a whole number could round up to it."""
    if unit <= 0:
        return None
    return math.floor(Fraction(max_cost) / Fraction(unit))


@dataclass(frozen=True)
class Cap:
    """How many images a run may buy, and what it says when it reaches that: `--max-images N`,
    or `--max-cost X` when the cost's budget is the smaller."""

    images: int | None
    label: str = ""

    def __str__(self) -> str:
        return self.label


def cap(max_images: int | None, max_cost: Decimal | None, pricing: Pricing, mode: str) -> Cap:
    """`--max-images` and `--max-cost` as one budget of images: the smaller wins. `--max-cost`
    without a price cannot be kept: a usage error, before anything is spent."""
    if max_cost is not None:
        unit = pricing.unit(mode)
        if unit is None:
            raise UsageError(
                "--max-cost needs a price: set [provider] price (per image, in the account's "
                "currency) in imgsave.toml"
            )
        by_cost = images_within(max_cost, unit)
        if by_cost is not None and (max_images is None or by_cost < max_images):
            return Cap(
                by_cost,
                f"--max-cost {money(max_cost)} {pricing.currency} ({by_cost} "
                f"image{'' if by_cost == 1 else 's'} at {money(unit)} {pricing.currency})",
            )
    if max_images is not None:
        return Cap(max_images, f"--max-images {max_images}")
    return Cap(None)


@dataclass(frozen=True)
class Limits:
    """What a buying run was told it may spend, as given: at most `max_images` images
    (`--max-images`), and no more than `max_cost` at the configured price (`--max-cost`).
    None: no such limit."""

    max_images: int | None = None
    max_cost: Decimal | None = None

    def cap(self, pricing: Pricing, mode: str) -> Cap:
        """The one budget of images these make in `mode` (`cap`)."""
        return cap(self.max_images, self.max_cost, pricing, mode)


def amount_json(amount: Decimal | None) -> float | None:
    """An amount for JSON: a number (the double nearest the exact amount), None when unknown."""
    return None if amount is None else float(amount)


def money(amount: Decimal) -> str:
    """An amount for people: at least two decimals (12.50), more when a price has them
    (0.0055), never an exponent."""
    if amount == 0:
        return "0.00"
    normal = amount.normalize()
    places = max(2, -int(normal.as_tuple().exponent))
    return f"{normal:.{places}f}"
