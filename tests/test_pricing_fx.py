"""Exchange rates (regions/exchange_rates.csv) and the USD figures built on them."""

from __future__ import annotations

import pytest

from footprint.pricing import _data, build_factors, price_query, usd_per_unit
from footprint.pricing._data import DataFileError, read_table


def test_every_price_currency_has_a_rate_for_its_year_or_near_it():
    for row in _data.table("electricity_prices.csv"):
        found = usd_per_unit(row["currency"], row["year"])
        assert found is not None, f"no exchange rate for {row['currency']} (line {row['_line']})"
        rate, ref = found
        assert rate > 0 and ref


def test_every_price_currency_has_a_rate_for_the_same_year():
    for row in _data.table("electricity_prices.csv"):
        if row["currency"] == "USD":
            continue
        _, ref = usd_per_unit(row["currency"], row["year"])
        assert "nearest year" not in ref, f"{row['zone']}: {ref[:60]}"


@pytest.mark.parametrize(
    ("currency", "year", "rate"),
    [
        ("EUR", 2024, 1.0824),  # ECB annual average 2024
        ("EUR", 2022, 1.0530),
        ("CAD", 2022, 1 / 1.3014),  # Fed G.5A: 1.3014 CAD per USD
        ("GBP", 2023, 1.2440),  # Fed G.5A quotes USD per GBP directly
        ("JPY", 2024, 1 / 151.4551),
        ("TWD", 2021, 1 / 27.9366),
        ("usd", None, 1.0),
    ],
)
def test_pinned_rates(currency, year, rate):
    assert usd_per_unit(currency, year)[0] == pytest.approx(rate, rel=1e-5)


def test_year_selection():
    assert usd_per_unit("EUR")[0] == pytest.approx(1.1306)  # latest year (2025)
    rate, ref = usd_per_unit("EUR", 2031)
    assert rate == pytest.approx(1.1306) and "nearest year to 2031" in ref and "AEXUSEU" in ref
    rate, ref = usd_per_unit("EUR", 2024)
    assert rate == pytest.approx(1.0824) and "nearest" not in ref and "ECB" in ref
    assert usd_per_unit("XXX") is None


def test_factors_carry_usd_price_and_its_exchange_rate_source():
    f = build_factors("FRA", env={})
    assert f.currency == "EUR"
    assert f.usd_per_kwh == pytest.approx(f.price_per_kwh * 1.0824)
    assert "EUR 2024" in f.exchange_rate_ref and "ECB" in f.exchange_rate_ref
    out = price_query(3_600_000.0, 0.0, f)
    assert out["energy_cost_usd"] == pytest.approx(out["energy_cost"] * 1.0824)


def test_canadian_price_converts_at_its_own_year():
    f = build_factors("CAN/quebec", env={})
    assert f.currency == "CAD"
    assert f.usd_per_kwh == pytest.approx(0.0837 / 1.3014, rel=1e-5)
    assert "CAD 2022" in f.exchange_rate_ref


def test_usd_prices_need_no_rate():
    f = build_factors("USA/texas", env={})
    assert f.usd_per_kwh == pytest.approx(f.price_per_kwh)
    assert price_query(3_600_000.0, 0.0, f)["energy_cost_usd"] == pytest.approx(
        price_query(3_600_000.0, 0.0, f)["energy_cost"]
    )


def test_override_in_a_currency_without_a_rate_gives_no_usd_figure():
    f = build_factors("FRA", price_per_kwh=0.3, currency="XAF", env={})
    assert f.usd_per_kwh is None and "no exchange rate for XAF" in f.exchange_rate_ref
    assert price_query(3_600_000.0, 0.0, f)["energy_cost_usd"] is None
    g = build_factors("FRA", price_per_kwh=0.3, currency="GBP", env={})
    assert g.usd_per_kwh == pytest.approx(0.3 * usd_per_unit("GBP")[0])


def test_exchange_rate_table_is_strict(tmp_path):
    path = tmp_path / "exchange_rates.csv"
    cols = _data.EXCHANGE_RATE_COLUMNS
    path.write_text("currency,usd_per_unit,year,source\nEUR,0,2024,x\n", encoding="utf-8")
    with pytest.raises(DataFileError) as info:
        read_table(path, cols)
    assert info.value.column == "usd_per_unit"
    path.write_text("currency,usd_per_unit,year,source\neuro,1.1,2024,x\n", encoding="utf-8")
    with pytest.raises(DataFileError) as info:
        read_table(path, cols)
    assert info.value.column == "currency"
    path.write_text(
        "currency,usd_per_unit,year,source\nEUR,1.1,2024,x\nEUR,1.2,2024,y\n", encoding="utf-8"
    )
    with pytest.raises(DataFileError) as info:
        _data.unique_exchange_rates(read_table(path, cols), path)
    assert info.value.line == 3 and "line 2" in str(info.value)
