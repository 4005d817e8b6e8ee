"""Kenyan statutory payroll rules and the payslip calculator, without servers."""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from uuid import uuid4

import pytest
from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    JSONTranscoder,
    UUIDAsHex,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregates.money import to_cents
from aggregates.statutory import (
    KENYA_RULES,
    DeductionsExceedGross,
    Employment,
    HealthScheme,
    InvalidDate,
    InvalidPeriod,
    InvalidRules,
    NegativeAmount,
    NhifBand,
    NoRulesInForce,
    Payslip,
    TaxBand,
    UnknownEmployment,
    parse_date,
    payslip,
    rules_for,
)

D = Decimal


def pay(gross: str | int, period: str = "2026-02", employment: str = "primary") -> Payslip:
    return payslip(D(gross), [], employment, rules_for(period))


def test_the_worked_example_of_february_2026_reproduces_to_the_cent() -> None:
    slip = pay(100_000)
    assert slip == Payslip(
        employment=Employment.PRIMARY,
        basic_pay=D("100000.00"),
        allowances=(),
        gross_pay=D("100000.00"),
        nssf_tier1_employee=D("540.00"),
        nssf_tier2_employee=D("5460.00"),
        nssf_employee=D("6000.00"),
        nssf_tier1_employer=D("540.00"),
        nssf_tier2_employer=D("5460.00"),
        nssf_employer=D("6000.00"),
        shif=D("2750.00"),
        nhif=D("0.00"),
        housing_levy=D("1500.00"),
        housing_levy_employer=D("1500.00"),
        taxable_pay=D("89750.00"),
        paye_before_relief=D("21708.35"),
        personal_relief=D("2400.00"),
        insurance_relief=D("0.00"),
        housing_relief=D("0.00"),
        paye=D("19308.35"),
        net_pay=D("70441.65"),
    )


def test_allowances_count_in_gross_pay_and_are_echoed() -> None:
    slip = payslip(D("80000"), [("house", D("15000")), ("commuter", D("5000"))], "primary",
                   rules_for("2026-02"))
    assert slip.gross_pay == D("100000.00")
    assert [(a.name, a.amount) for a in slip.allowances] == [("house", D("15000.00")),
                                                             ("commuter", D("5000.00"))]
    assert slip.net_pay == pay(100_000).net_pay


def test_income_above_999_999_is_taxed_at_35_percent_on_the_excess() -> None:
    slip = pay(2_000_000)
    # NSSF 540 + 5,940; SHIF 55,000; levy 30,000
    assert slip.taxable_pay == D("2000000") - D("6480") - D("55000") - D("30000") == D("1908520.00")
    bands = (D("24000") * D("0.10") + D("8333") * D("0.25") + (D("500000") - D("32333")) * D("0.30")
             + D("300000") * D("0.325") + (D("1908520") - D("800000")) * D("0.35"))
    assert slip.paye_before_relief == bands == D("630265.35")
    assert slip.paye == D("627865.35")
    assert slip.net_pay == D("1280654.65")


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1_000_000, max_value=50_000_000))
def test_every_shilling_above_800_000_of_taxable_pay_bears_35_percent(gross: int) -> None:
    lower, higher = pay(gross), pay(gross + 1000)
    extra_taxable = higher.taxable_pay - lower.taxable_pay
    assert abs((higher.paye - lower.paye) - extra_taxable * D("0.35")) <= D("0.01")


def test_secondary_employment_is_taxed_at_35_percent_flat_without_relief() -> None:
    slip = pay(100_000, employment="secondary")
    assert slip.taxable_pay == D("89750.00")
    assert slip.paye_before_relief == slip.paye == D("31412.50")
    assert (slip.personal_relief, slip.insurance_relief, slip.housing_relief) == (D(0),) * 3
    assert slip.net_pay == D("58337.50")


def test_secondary_employment_tax_is_never_the_whole_pay() -> None:
    slip = pay(20_000, employment="secondary")
    assert slip.paye == to_cents(slip.taxable_pay * D("0.35"))
    assert slip.net_pay > slip.gross_pay / 2


def test_the_shif_minimum_of_300_applies_to_low_pay() -> None:
    slip = pay(8_000)
    assert slip.shif == D("300.00")  # 2.75 % would be 220
    assert (slip.nssf_tier1_employee, slip.nssf_tier2_employee, slip.housing_levy) == (
        D("480.00"), D("0.00"), D("120.00"))
    assert slip.taxable_pay == D("7100.00")
    assert slip.paye == 0  # tax 710 is less than the relief
    assert slip.net_pay == D("7100.00")


def test_a_period_before_october_2024_pays_nhif_with_insurance_and_housing_relief() -> None:
    slip = pay(100_000, "2024-09")
    assert (slip.nhif, slip.shif) == (D("1700.00"), D("0.00"))
    assert (slip.nssf_tier1_employee, slip.nssf_tier2_employee) == (D("420.00"), D("1740.00"))
    assert slip.housing_levy == D("1500.00")
    assert slip.taxable_pay == D("97840.00")  # only NSSF was deductible then
    assert slip.paye_before_relief == D("24135.35")
    assert (slip.personal_relief, slip.insurance_relief, slip.housing_relief) == (
        D("2400.00"), D("255.00"), D("225.00"))
    assert slip.paye == D("21255.35")
    assert slip.net_pay == D("73384.65")


def test_october_2024_pays_shif_instead_of_nhif() -> None:
    slip = pay(100_000, "2024-10")
    assert (slip.shif, slip.nhif, slip.insurance_relief) == (D("2750.00"), D("0.00"), D("0.00"))


@pytest.mark.parametrize(("gross", "nhif"), [
    ("1000", "150"), ("5999.99", "150"), ("6000", "300"), ("11999", "400"), ("12000", "500"),
    ("24999", "750"), ("45000", "1100"), ("59999", "1200"), ("99999.99", "1600"),
    ("100000", "1700"), ("1000000", "1700"),
])
def test_nhif_follows_the_band_table(gross: str, nhif: str) -> None:
    assert pay(gross, "2024-06").nhif == D(nhif)


@pytest.mark.parametrize(("period", "tier1", "tier2"), [
    ("2023-08", "360.00", "720.00"),
    ("2024-01", "360.00", "720.00"),
    ("2024-02", "420.00", "1740.00"),
    ("2025-01", "420.00", "1740.00"),
    ("2025-02", "480.00", "3840.00"),
    ("2026-01", "480.00", "3840.00"),
    ("2026-02", "540.00", "5940.00"),
    ("2031-12", "540.00", "5940.00"),
])
def test_nssf_tiers_follow_the_limits_in_force(period: str, tier1: str, tier2: str) -> None:
    slip = pay(200_000, period)
    assert (slip.nssf_tier1_employee, slip.nssf_tier2_employee) == (D(tier1), D(tier2))
    assert (slip.nssf_tier1_employer, slip.nssf_tier2_employer) == (D(tier1), D(tier2))


def test_the_housing_levy_from_19_march_2024_applies_to_march_pay() -> None:
    assert pay(100_000, "2024-02").housing_levy == 0
    march = pay(100_000, "2024-03")
    assert (march.housing_levy, march.housing_levy_employer) == (D("1500.00"), D("1500.00"))


def test_shif_and_the_levy_are_deductible_from_december_2024_pay() -> None:
    november, december = pay(100_000, "2024-11"), pay(100_000, "2024-12")
    assert november.taxable_pay == november.gross_pay - november.nssf_employee
    assert november.housing_relief == D("225.00")
    assert december.taxable_pay == (december.gross_pay - december.nssf_employee - december.shif
                                    - december.housing_levy)
    assert december.housing_relief == 0


def test_no_rules_are_in_force_before_july_2023() -> None:
    with pytest.raises(NoRulesInForce) as refused:
        rules_for("2023-06")
    assert refused.value.field == "period"


@pytest.mark.parametrize("period", ["2026-13", "2026-2", "26-02", "2026-02-01", "", "0000-01", "1899-12"])
def test_a_period_must_be_a_month(period: str) -> None:
    with pytest.raises(InvalidPeriod):
        rules_for(period)


@pytest.mark.parametrize("on", ["0001-01-01", "1899-12-31"])
def test_a_date_before_1900_is_refused_by_name(on: str) -> None:
    with pytest.raises(InvalidDate) as refused:
        parse_date(on, "hired_on")
    assert refused.value.field == "hired_on" and "before 1900" in str(refused.value)


def test_a_tenant_override_applies_only_from_its_own_date() -> None:
    statutory = rules_for("2026-02")
    override = statutory.amended("2026-04-15", "tenant: negotiated NSSF", nssf_employer_rate=D("0.08"))
    assert rules_for("2026-03", [override]) is statutory
    assert rules_for("2026-04", [override]) is override  # in force on 30 April
    assert rules_for("2027-01", [override]) is override
    assert pay(100_000, "2026-03").nssf_employer == D("6000.00")
    assert payslip(D(100_000), [], "primary", rules_for("2026-05", [override])).nssf_employer == D("8000.00")


def test_an_override_wins_over_statutory_rules_of_the_same_date_until_later_law() -> None:
    same_date = rules_for("2025-02").amended("2025-02", "tenant", shif_minimum=D("500"))
    assert rules_for("2025-02", [same_date]) is same_date
    assert rules_for("2026-02", [same_date]).source == "NSSF Act 2013 year 4 limits"


def test_the_rule_table_is_in_date_order_and_starts_with_the_finance_act_2023() -> None:
    dates = [rules.in_force_from for rules in KENYA_RULES]
    assert dates == sorted(dates)
    assert KENYA_RULES[0].effective_from == "2023-07"
    assert KENYA_RULES[0].paye_bands[-1] == TaxBand(None, D("0.35"))


@pytest.mark.parametrize("changes", [
    {"effective_from": "2026-02-30"},
    {"effective_from": "next year"},
    {"shif_rate": D("1.5")},
    {"nssf_employee_rate": D("-0.01")},
    {"personal_relief": D("-1")},
    {"nssf_upper_limit": D("1000")},
    {"paye_bands": (TaxBand(D("5000"), D("0.1")), TaxBand(D("4000"), D("0.2")), TaxBand(None, D("0.3")))},
    {"paye_bands": (TaxBand(D("5000"), D("0.1")),)},
    {"health_scheme": HealthScheme.NHIF},  # without NHIF bands
    {"health_scheme": HealthScheme.NHIF, "nhif_bands": (NhifBand(None, D("1")), NhifBand(D("10"), D("2")))},
])
def test_a_rule_set_with_impossible_values_is_refused(changes: dict[str, object]) -> None:
    with pytest.raises(InvalidRules):
        dataclasses.replace(rules_for("2026-02"), **changes)  # type: ignore[arg-type]


def test_pay_too_small_for_its_deductions_is_refused() -> None:
    with pytest.raises(DeductionsExceedGross) as refused:
        pay(200)  # SHIF minimum 300 alone exceeds it
    assert refused.value.field == "basic_pay"
    with pytest.raises(DeductionsExceedGross):
        pay(100, "2024-06")  # NHIF 150


def test_negative_pay_and_unknown_employment_are_refused() -> None:
    with pytest.raises(NegativeAmount):
        payslip(D("-1"), [], "primary", rules_for("2026-02"))
    with pytest.raises(NegativeAmount) as refused:
        payslip(D("1000"), [("house", D("NaN"))], "primary", rules_for("2026-02"))
    assert refused.value.field == "allowances[house]"
    with pytest.raises(UnknownEmployment):
        payslip(D("50000"), [], "casual", rules_for("2026-02"))


def test_a_payslip_converts_to_json_storable_values_and_back() -> None:
    slip = payslip(D("90000"), [("house", D("10000.50"))], "secondary", rules_for("2026-02"))
    stored = slip.as_dict()
    assert stored["employment"] == "secondary"
    assert stored["allowances"] == [{"name": "house", "amount": D("10000.50")}]
    transcoder = JSONTranscoder()
    for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO()):
        transcoder.register(transcoding)
    round_trip = transcoder.decode(transcoder.encode({"id": uuid4(), "slip": stored}))["slip"]
    assert Payslip.from_dict(round_trip) == slip


PERIODS = st.sampled_from(["2023-07", "2024-02", "2024-03", "2024-09", "2024-10", "2024-12",
                           "2025-02", "2025-07", "2026-02", "2027-06"])
CENTS = st.integers(min_value=0, max_value=300_000_000).map(lambda c: D(c) / 100)


@settings(max_examples=300, deadline=None)
@given(basic=CENTS, extra=st.lists(CENTS, max_size=3), period=PERIODS,
       employment=st.sampled_from(list(Employment)))
def test_every_payslip_adds_up_to_the_cent(
    basic: Decimal, extra: list[Decimal], period: str, employment: Employment
) -> None:
    rules = rules_for(period)
    allowances = [(f"a{i}", amount) for i, amount in enumerate(extra)]
    try:
        slip = payslip(basic, allowances, employment, rules)
    except DeductionsExceedGross:
        assert basic + sum(extra, D(0)) < 1000  # only pay too small for the minimum contributions
        return
    amounts = [v for v in slip.as_dict().values() if isinstance(v, Decimal)]
    assert all(v == v.quantize(D("0.01")) and v >= 0 for v in amounts)
    assert slip.gross_pay == basic + sum(extra, D(0))
    assert slip.net_pay == slip.gross_pay - slip.total_deductions >= 0
    assert slip.nssf_employee == slip.nssf_tier1_employee + slip.nssf_tier2_employee
    assert slip.nssf_employee <= rules.nssf_upper_limit * rules.nssf_employee_rate
    deductible = slip.nssf_employee
    if rules.health_and_levy_deductible:
        deductible += slip.shif + slip.housing_levy
    assert slip.taxable_pay == max(slip.gross_pay - deductible, D(0))
    assert slip.paye <= slip.paye_before_relief <= slip.taxable_pay * D("0.35") + D("0.01")
    if employment is Employment.SECONDARY:
        assert slip.paye == to_cents(slip.taxable_pay * D("0.35"))


@settings(max_examples=200, deadline=None)
@given(gross=st.integers(min_value=1_000, max_value=5_000_000), raise_by=st.integers(1, 100_000))
def test_more_pay_never_means_less_net_pay_or_less_tax(gross: int, raise_by: int) -> None:
    lower, higher = pay(gross), pay(gross + raise_by)
    assert higher.paye >= lower.paye
    assert higher.net_pay > lower.net_pay
