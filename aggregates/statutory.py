"""Kenyan statutory payroll: the rules as data with effective dates, and the payslip they give.

A rule set is complete (every rate and limit in force from its `effective_from`), so the
rules for a period are one lookup: the latest rule set in force on the period's last day.
A change in the law, or a tenant's own rates, is a new rule set, never an edit of code.

Sources (confirm against KRA, NSSF and SHA notices before a release):
- PAYE bands: Finance Act 2023, from 1 Jul 2023; personal relief 2,400 since 2021.
- NSSF Act 2013 phases: 6,000 / 18,000 from Feb 2023 (year 1); 7,000 / 36,000 from
  Feb 2024; 8,000 / 72,000 from Feb 2025; 9,000 / 108,000 from Feb 2026.
- NHIF: the 2015 band table, until SHIF (2.75 % of gross, minimum 300) from 1 Oct 2024.
  NHIF contributions earned insurance relief (15 %, at most 5,000); SHIF does not.
- Affordable Housing Levy 1.5 % + 1.5 % from 19 Mar 2024 (Affordable Housing Act 2024),
  with affordable housing relief (15 % of the levy) until the Tax Laws (Amendment) Act
  2024 made SHIF and the levy deductible from 27 Dec 2024 instead.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from enum import StrEnum
from typing import Any, NamedTuple

from aggregates.errors import InvalidValue
from aggregates.money import MAX_AMOUNT, to_cents

ZERO = Decimal("0.00")

_PERIOD = re.compile(r"(\d{4})-(\d{2})")
FIRST_YEAR = 1900  # no payroll month or date before it (year 0 is no date at all)
_MONTH_OR_DAY = re.compile(r"(\d{4})-(\d{2})(?:-(\d{2}))?")


class InvalidPeriod(InvalidValue):
    pass


class InvalidDate(InvalidValue):
    pass


class InvalidRules(InvalidValue):
    pass


class NoRulesInForce(InvalidValue):
    pass


class UnknownEmployment(InvalidValue):
    pass


class NegativeAmount(InvalidValue):
    pass


class DeductionsExceedGross(InvalidValue):
    pass


def parse_period(period: str, field: str = "period") -> tuple[int, int]:
    """(year, month) of a payroll period written "YYYY-MM"."""
    found = _PERIOD.fullmatch(period)
    if found is None or not 1 <= int(found[2]) <= 12:
        raise InvalidPeriod(f"period {period!r} is not a month written YYYY-MM", field=field)
    if int(found[1]) < FIRST_YEAR:
        raise InvalidPeriod(f"period {period!r} is before {FIRST_YEAR}", field=field)
    return int(found[1]), int(found[2])


def first_day(period: str, field: str = "period") -> date:
    year, month = parse_period(period, field)
    return date(year, month, 1)


def last_day(period: str, field: str = "period") -> date:
    year, month = parse_period(period, field)
    return date(year, month, calendar.monthrange(year, month)[1])


def parse_date(value: str, field: str) -> date:
    """A calendar date written "YYYY-MM-DD"."""
    try:
        if len(value) != 10:
            raise ValueError(value)
        found = date.fromisoformat(value)
    except ValueError:
        raise InvalidDate(f"{field} {value!r} is not a date written YYYY-MM-DD", field=field) from None
    if found.year < FIRST_YEAR:
        raise InvalidDate(f"{field} {value!r} is before {FIRST_YEAR}", field=field)
    return found


def _in_force_from(effective_from: str) -> date:
    """"YYYY-MM" means the first of that month; "YYYY-MM-DD" that day."""
    found = _MONTH_OR_DAY.fullmatch(effective_from)
    try:
        if found is None:
            raise ValueError(effective_from)
        return date(int(found[1]), int(found[2]), int(found[3] or 1))
    except ValueError:
        raise InvalidRules(
            f"effective_from {effective_from!r} is neither YYYY-MM nor YYYY-MM-DD",
            field="effective_from",
        ) from None


class Employment(StrEnum):
    PRIMARY = "primary"
    SECONDARY = "secondary"  # taxed at a flat rate without reliefs (KRA)


def employment_of(value: str, field: str = "employment") -> Employment:
    try:
        return Employment(value)
    except ValueError:
        choices = ", ".join(e.value for e in Employment)
        raise UnknownEmployment(f"employment {value!r} is not one of {choices}", field=field) from None


class HealthScheme(StrEnum):
    NHIF = "nhif"
    SHIF = "shif"


class Allowance(NamedTuple):
    name: str
    amount: Decimal


@dataclass(frozen=True)
class TaxBand:
    up_to: Decimal | None  # monthly taxable pay where the band ends; None: no end
    rate: Decimal


@dataclass(frozen=True)
class NhifBand:
    below: Decimal | None  # gross pay below which this contribution applies; None: no limit
    contribution: Decimal


@dataclass(frozen=True)
class StatutoryRules:
    """Every monthly rate and limit in force from `effective_from` ("YYYY-MM" or "YYYY-MM-DD")."""

    effective_from: str
    source: str
    paye_bands: tuple[TaxBand, ...]
    personal_relief: Decimal
    secondary_employment_rate: Decimal
    nssf_employee_rate: Decimal
    nssf_employer_rate: Decimal
    nssf_lower_limit: Decimal  # Tier I: pay up to this
    nssf_upper_limit: Decimal  # Tier II: pay above Tier I up to this
    health_scheme: HealthScheme
    shif_rate: Decimal
    shif_minimum: Decimal
    nhif_bands: tuple[NhifBand, ...]
    insurance_relief_rate: Decimal  # of the NHIF contribution
    insurance_relief_cap: Decimal
    housing_levy_employee_rate: Decimal
    housing_levy_employer_rate: Decimal
    housing_relief_rate: Decimal  # of the employee's levy
    housing_relief_cap: Decimal
    health_and_levy_deductible: bool  # SHIF (or NHIF) and the levy reduce taxable pay

    def __post_init__(self) -> None:
        _in_force_from(self.effective_from)
        self._check_bands()
        rates = {
            "secondary_employment_rate": self.secondary_employment_rate,
            "nssf_employee_rate": self.nssf_employee_rate,
            "nssf_employer_rate": self.nssf_employer_rate,
            "shif_rate": self.shif_rate,
            "insurance_relief_rate": self.insurance_relief_rate,
            "housing_levy_employee_rate": self.housing_levy_employee_rate,
            "housing_levy_employer_rate": self.housing_levy_employer_rate,
            "housing_relief_rate": self.housing_relief_rate,
            **{f"paye_bands[{i}].rate": band.rate for i, band in enumerate(self.paye_bands)},
        }
        for name, rate in rates.items():
            if not rate.is_finite() or not 0 <= rate <= 1:
                raise InvalidRules(f"{name} {rate} is not a rate between 0 and 1", field=name)
        amounts = {
            "personal_relief": self.personal_relief,
            "nssf_lower_limit": self.nssf_lower_limit,
            "shif_minimum": self.shif_minimum,
            "insurance_relief_cap": self.insurance_relief_cap,
            "housing_relief_cap": self.housing_relief_cap,
            **{f"nhif_bands[{i}].contribution": b.contribution for i, b in enumerate(self.nhif_bands)},
        }
        for name, amount in amounts.items():
            if not amount.is_finite() or amount < 0:
                raise InvalidRules(f"{name} {amount} must not be negative", field=name)
            if amount >= MAX_AMOUNT:
                raise InvalidRules(f"{name} {amount:f} is not an amount below {MAX_AMOUNT:,}", field=name)
        if not self.nssf_upper_limit.is_finite() or self.nssf_upper_limit < self.nssf_lower_limit:
            raise InvalidRules(
                f"nssf_upper_limit {self.nssf_upper_limit} is below nssf_lower_limit "
                f"{self.nssf_lower_limit}",
                field="nssf_upper_limit",
            )

    def _check_bands(self) -> None:
        _check_band_limits("paye_bands", [b.up_to for b in self.paye_bands])
        if self.health_scheme is HealthScheme.NHIF or self.nhif_bands:
            _check_band_limits("nhif_bands", [b.below for b in self.nhif_bands])

    @property
    def in_force_from(self) -> date:
        return _in_force_from(self.effective_from)

    def amended(self, effective_from: str, source: str, **changes: Any) -> StatutoryRules:
        """These rules with some values changed from a later date."""
        fields = {**vars(self), "effective_from": effective_from, "source": source, **changes}
        return StatutoryRules(**fields)


def _check_band_limits(name: str, ends: list[Decimal | None]) -> None:
    if not ends or ends[-1] is not None or None in ends[:-1]:
        raise InvalidRules(f"{name} must end with one open band (no limit)", field=name)
    limits = [end for end in ends if end is not None]
    if any(not end.is_finite() or end <= 0 for end in limits) or limits != sorted(set(limits)):
        raise InvalidRules(f"{name} limits must be positive and rising", field=name)


def _bands(*pairs: tuple[str | None, str]) -> tuple[TaxBand, ...]:
    return tuple(TaxBand(None if up_to is None else Decimal(up_to), Decimal(rate)) for up_to, rate in pairs)


_NHIF_2015 = tuple(
    NhifBand(None if below is None else Decimal(below), Decimal(contribution))
    for below, contribution in (
        ("6000", "150"), ("8000", "300"), ("12000", "400"), ("15000", "500"),
        ("20000", "600"), ("25000", "750"), ("30000", "850"), ("35000", "900"),
        ("40000", "950"), ("45000", "1000"), ("50000", "1100"), ("60000", "1200"),
        ("70000", "1300"), ("80000", "1400"), ("90000", "1500"), ("100000", "1600"),
        (None, "1700"),
    )
)

_FINANCE_ACT_2023 = StatutoryRules(
    effective_from="2023-07",
    source="Finance Act 2023 PAYE bands; NSSF year 1 limits (Feb 2023); NHIF 2015 bands",
    paye_bands=_bands(("24000", "0.10"), ("32333", "0.25"), ("500000", "0.30"),
                      ("800000", "0.325"), (None, "0.35")),
    personal_relief=Decimal("2400"),
    secondary_employment_rate=Decimal("0.35"),
    nssf_employee_rate=Decimal("0.06"),
    nssf_employer_rate=Decimal("0.06"),
    nssf_lower_limit=Decimal("6000"),
    nssf_upper_limit=Decimal("18000"),
    health_scheme=HealthScheme.NHIF,
    shif_rate=Decimal("0"),
    shif_minimum=Decimal("0"),
    nhif_bands=_NHIF_2015,
    insurance_relief_rate=Decimal("0.15"),
    insurance_relief_cap=Decimal("5000"),
    housing_levy_employee_rate=Decimal("0"),
    housing_levy_employer_rate=Decimal("0"),
    housing_relief_rate=Decimal("0"),
    housing_relief_cap=Decimal("0"),
    health_and_levy_deductible=False,
)
_NSSF_YEAR_2 = _FINANCE_ACT_2023.amended(
    "2024-02", "NSSF Act 2013 year 2 limits",
    nssf_lower_limit=Decimal("7000"), nssf_upper_limit=Decimal("36000"),
)
_HOUSING_LEVY = _NSSF_YEAR_2.amended(
    "2024-03-19", "Affordable Housing Act 2024 levy, with affordable housing relief",
    housing_levy_employee_rate=Decimal("0.015"), housing_levy_employer_rate=Decimal("0.015"),
    housing_relief_rate=Decimal("0.15"), housing_relief_cap=Decimal("9000"),
)
_SHIF = _HOUSING_LEVY.amended(
    "2024-10", "Social Health Insurance Act 2023: SHIF replaces NHIF",
    health_scheme=HealthScheme.SHIF, shif_rate=Decimal("0.0275"), shif_minimum=Decimal("300"),
    nhif_bands=(), insurance_relief_rate=Decimal("0"), insurance_relief_cap=Decimal("0"),
)
_TAX_LAWS_AMENDMENT_2024 = _SHIF.amended(
    "2024-12-27", "Tax Laws (Amendment) Act 2024: SHIF and the levy deductible, housing relief ended",
    health_and_levy_deductible=True, housing_relief_rate=Decimal("0"), housing_relief_cap=Decimal("0"),
)
_NSSF_YEAR_3 = _TAX_LAWS_AMENDMENT_2024.amended(
    "2025-02", "NSSF Act 2013 year 3 limits",
    nssf_lower_limit=Decimal("8000"), nssf_upper_limit=Decimal("72000"),
)
_NSSF_YEAR_4 = _NSSF_YEAR_3.amended(
    "2026-02", "NSSF Act 2013 year 4 limits",
    nssf_lower_limit=Decimal("9000"), nssf_upper_limit=Decimal("108000"),
)

KENYA_RULES: tuple[StatutoryRules, ...] = (
    _FINANCE_ACT_2023,
    _NSSF_YEAR_2,
    _HOUSING_LEVY,
    _SHIF,
    _TAX_LAWS_AMENDMENT_2024,
    _NSSF_YEAR_3,
    _NSSF_YEAR_4,
)


def rules_for(period: str, overrides: Iterable[StatutoryRules] = ()) -> StatutoryRules:
    """The rule set in force for a payroll period: the latest one in force on the period's
    last day (a rule from 19 Mar applies to all of March's pay). A tenant's override wins
    from its own date until a later rule set, and over a statutory one of the same date."""
    end = last_day(period)
    candidates = [(rules.in_force_from, 0, i, rules) for i, rules in enumerate(KENYA_RULES)]
    candidates += [(rules.in_force_from, 1, i, rules) for i, rules in enumerate(overrides)]
    in_force = [c for c in candidates if c[0] <= end]
    if not in_force:
        earliest = min(c[0] for c in candidates)
        raise NoRulesInForce(
            f"no statutory rules are in force for {period}; the earliest are from {earliest}",
            field="period",
        )
    return max(in_force, key=lambda c: c[:3])[3]


def _money(amount: Decimal, field: str) -> Decimal:
    if not amount.is_finite() or amount < 0:
        raise NegativeAmount(f"{field} {amount} must be an amount of at least zero", field=field)
    return to_cents(amount)


@dataclass(frozen=True)
class Payslip:
    """One month's pay for one employment; every amount in cents, and it adds up:
    net_pay = gross_pay - nssf_employee - shif - nhif - housing_levy - paye."""

    employment: Employment
    basic_pay: Decimal
    allowances: tuple[Allowance, ...]
    gross_pay: Decimal
    nssf_tier1_employee: Decimal
    nssf_tier2_employee: Decimal
    nssf_employee: Decimal
    nssf_tier1_employer: Decimal
    nssf_tier2_employer: Decimal
    nssf_employer: Decimal
    shif: Decimal
    nhif: Decimal
    housing_levy: Decimal
    housing_levy_employer: Decimal
    taxable_pay: Decimal
    paye_before_relief: Decimal
    personal_relief: Decimal
    insurance_relief: Decimal
    housing_relief: Decimal
    paye: Decimal
    net_pay: Decimal

    @property
    def total_deductions(self) -> Decimal:
        return self.nssf_employee + self.shif + self.nhif + self.housing_levy + self.paye

    def as_dict(self) -> dict[str, Any]:
        """JSON-storable (str and Decimal values) for events; `from_dict` reads it back."""
        fields = dict(vars(self))
        fields["employment"] = self.employment.value
        fields["allowances"] = [{"name": a.name, "amount": a.amount} for a in self.allowances]
        return fields

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any]) -> Payslip:
        values = dict(fields)
        values["employment"] = Employment(values["employment"])
        values["allowances"] = tuple(Allowance(a["name"], a["amount"]) for a in values["allowances"])
        return cls(**values)


def _tax_on_bands(taxable: Decimal, bands: tuple[TaxBand, ...]) -> Decimal:
    tax = Decimal(0)
    lower = Decimal(0)
    for band in bands:
        upper = taxable if band.up_to is None else min(taxable, band.up_to)
        if upper <= lower:
            break
        tax += (upper - lower) * band.rate
        lower = upper
    return tax


def _nhif(gross: Decimal, bands: tuple[NhifBand, ...]) -> Decimal:
    return next(b.contribution for b in bands if b.below is None or gross < b.below)


def payslip(
    basic_pay: Decimal,
    allowances: Iterable[tuple[str, Decimal]],
    employment: Employment | str,
    rules: StatutoryRules,
) -> Payslip:
    """The payslip for a month's pay under `rules`. Every allowance is taxable cash pay.

    Refuses (DeductionsExceedGross) pay too small to bear its statutory deductions, as
    ERPNext refuses a negative net pay: a payslip never hides a shortfall.
    """
    kind = employment_of(employment)
    basic = _money(basic_pay, "basic_pay")
    paid = tuple(Allowance(name, _money(amount, f"allowances[{name}]")) for name, amount in allowances)
    gross = basic + sum((a.amount for a in paid), ZERO)

    tier1_pay = min(gross, rules.nssf_lower_limit)
    tier2_pay = max(min(gross, rules.nssf_upper_limit) - rules.nssf_lower_limit, ZERO)
    nssf_tier1_employee = to_cents(tier1_pay * rules.nssf_employee_rate)
    nssf_tier2_employee = to_cents(tier2_pay * rules.nssf_employee_rate)
    nssf_tier1_employer = to_cents(tier1_pay * rules.nssf_employer_rate)
    nssf_tier2_employer = to_cents(tier2_pay * rules.nssf_employer_rate)
    nssf_employee = nssf_tier1_employee + nssf_tier2_employee

    if rules.health_scheme is HealthScheme.SHIF:
        shif, nhif = to_cents(max(gross * rules.shif_rate, rules.shif_minimum)), ZERO
    else:
        shif, nhif = ZERO, to_cents(_nhif(gross, rules.nhif_bands))
    housing_levy = to_cents(gross * rules.housing_levy_employee_rate)
    housing_levy_employer = to_cents(gross * rules.housing_levy_employer_rate)

    deductible = nssf_employee
    if rules.health_and_levy_deductible:
        deductible += shif + nhif + housing_levy
    taxable_pay = max(gross - deductible, ZERO)

    if kind is Employment.SECONDARY:
        paye_before_relief = to_cents(taxable_pay * rules.secondary_employment_rate)
        personal_relief = insurance_relief = housing_relief = ZERO
    else:
        paye_before_relief = to_cents(_tax_on_bands(taxable_pay, rules.paye_bands))
        personal_relief = to_cents(rules.personal_relief)
        insurance_relief = to_cents(min(nhif * rules.insurance_relief_rate, rules.insurance_relief_cap))
        housing_relief = to_cents(min(housing_levy * rules.housing_relief_rate, rules.housing_relief_cap))
    paye = max(paye_before_relief - personal_relief - insurance_relief - housing_relief, ZERO)

    net_pay = gross - nssf_employee - shif - nhif - housing_levy - paye
    if net_pay < 0:
        raise DeductionsExceedGross(
            f"gross pay {gross} cannot bear its statutory deductions "
            f"({gross - net_pay}); net pay would be {net_pay}",
            field="basic_pay",
        )
    return Payslip(
        employment=kind,
        basic_pay=basic,
        allowances=paid,
        gross_pay=gross,
        nssf_tier1_employee=nssf_tier1_employee,
        nssf_tier2_employee=nssf_tier2_employee,
        nssf_employee=nssf_employee,
        nssf_tier1_employer=nssf_tier1_employer,
        nssf_tier2_employer=nssf_tier2_employer,
        nssf_employer=nssf_tier1_employer + nssf_tier2_employer,
        shif=shif,
        nhif=nhif,
        housing_levy=housing_levy,
        housing_levy_employer=housing_levy_employer,
        taxable_pay=taxable_pay,
        paye_before_relief=paye_before_relief,
        personal_relief=personal_relief,
        insurance_relief=insurance_relief,
        housing_relief=housing_relief,
        paye=paye,
        net_pay=net_pay,
    )
