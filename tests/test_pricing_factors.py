"""Factors (with sources and overrides), configuration-time validation, price_query."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from footprint.pricing import (
    DefaultZoneWarning,
    Factors,
    PricingOverrides,
    build_factors,
    embodied_for,
    gpu_price_for,
    lookup_zone,
    price_query,
    pue_for,
    static_intensity,
)


def test_cloud_factors_carry_every_source():
    f = build_factors("aws:us-east-1", gpu_model="NVIDIA H100 80GB HBM3")
    assert f.zone == "aws:us-east-1" and f.intensity_source == "static"
    assert f.intensity_g_per_kwh == static_intensity(lookup_zone("USA/virginia")).g_per_kwh
    assert f.pue == pytest.approx(1.14) and "amazon" in f.pue_ref.casefold()
    assert (f.price_per_kwh, f.currency) == (pytest.approx(0.0895), "USD")
    assert "EIA" in f.price_ref
    assert f.usd_per_gpu_hour == pytest.approx(6.88) and "p5.48xlarge" in f.gpu_price_ref
    assert (f.embodied_kgco2e, f.lifetime_years) == (150.0, 6.0) and "BLOOM" in f.embodied_ref
    assert f.overrides == () and not f.zone_is_default
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.pue = 2.0  # type: ignore[misc]


def test_country_factors_use_on_premise_pue_and_eurostat_price():
    f = build_factors("FRA")
    assert f.pue == pytest.approx(1.58) and "Uptime" in f.pue_ref
    assert (f.price_per_kwh, f.currency) == (pytest.approx(0.1785), "EUR")
    assert "nrg_pc_205" in f.price_ref
    assert f.usd_per_gpu_hour is None


def test_provider_pue_can_be_chosen_for_a_grid_zone():
    assert build_factors("DEU", provider="gcp").pue == pytest.approx(1.10)


def test_missing_price_is_none_not_invented():
    f = build_factors("AFG")
    assert f.price_per_kwh is None and f.currency is None and "no electricity price" in f.price_ref


def test_zone_from_env_and_default_flag():
    assert build_factors(env={"FOOTPRINT_REGION": "gcp:europe-west9"}).zone == "gcp:europe-west9"
    with pytest.warns(DefaultZoneWarning, match="no region configured"):
        from footprint.pricing.zones import _reset_default_warning

        _reset_default_warning()
        assert build_factors(env={}).zone_is_default


@pytest.mark.parametrize(
    ("gpu", "provider", "price"),
    [
        ("NVIDIA H100 80GB HBM3", "aws", 6.88),
        ("NVIDIA H100 NVL", "azure", 6.98),
        ("NVIDIA H200", "aws", 7.912),
        ("NVIDIA A100-SXM4-80GB", "aws", 3.4309),
        ("NVIDIA A100-SXM4-40GB", "aws", 2.7447),
        ("NVIDIA A100 80GB PCIe", "azure", 3.673),
        ("NVIDIA A10G", "aws", 1.006),
        ("NVIDIA L4", "aws", 0.8048),
        ("NVIDIA L40S", "aws", 1.861),
        ("Tesla T4", "aws", 0.526),
    ],
)
def test_gpu_prices_match_nvml_names(gpu, provider, price):
    assert gpu_price_for(gpu, provider)[0] == pytest.approx(price)


def test_gpu_price_is_the_providers_own_offer_only():
    assert gpu_price_for("NVIDIA H200", "gcp")[0] == pytest.approx(10.4365)
    assert gpu_price_for("NVIDIA H200", "aws")[0] == pytest.approx(7.912)
    assert gpu_price_for("NVIDIA GeForce RTX 4090", "aws") is None
    # "L4" must not catch the L40 / L40S, nor "A10G" a plain A10
    assert gpu_price_for("NVIDIA L40", "aws") is None
    assert gpu_price_for("NVIDIA A10", "aws") is None


def test_overrides_win_and_are_recorded():
    f = build_factors(
        "aws:eu-west-1",
        gpu_model="NVIDIA A10G",
        price_per_kwh=0.2,
        currency="EUR",
        usd_per_gpu_hour=1.5,
        pue=1.3,
        market_intensity_g_per_kwh=0.0,
        embodied_kgco2e=300,
        lifetime_years=4,
    )
    assert (f.price_per_kwh, f.currency, f.usd_per_gpu_hour, f.pue) == (0.2, "EUR", 1.5, 1.3)
    assert f.market_intensity_g_per_kwh == 0.0 and "contractual" in f.market_intensity_ref
    assert (f.embodied_kgco2e, f.lifetime_years) == (300.0, 4.0)
    assert set(f.overrides) == {
        "price_per_kwh",
        "currency",
        "usd_per_gpu_hour",
        "pue",
        "market_intensity_g_per_kwh",
        "embodied_kgco2e",
        "lifetime_years",
    }
    assert f.price_ref == "user override"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"price_per_kwh": -0.1, "currency": "EUR"}, "price_per_kwh"),
        ({"price_per_kwh": math.nan, "currency": "EUR"}, "price_per_kwh"),
        ({"price_per_kwh": math.inf, "currency": "EUR"}, "price_per_kwh"),
        ({"usd_per_gpu_hour": -1.0}, "usd_per_gpu_hour"),
        ({"usd_per_gpu_hour": math.nan}, "usd_per_gpu_hour"),
        ({"pue": 0.9}, "PUE must be >= 1"),
        ({"pue": math.nan}, "pue"),
        ({"market_intensity_g_per_kwh": -3.0}, "market_intensity"),
        ({"currency": "euro"}, "currency"),
        ({"lifetime_years": 0}, "lifetime_years"),
        ({"price_per_kwh": "0.2", "currency": "EUR"}, "must be a number"),
    ],
)
def test_bad_settings_are_rejected_at_configuration_time(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PricingOverrides(**kwargs)
    with pytest.raises(ValueError, match=message):
        build_factors("FRA", **kwargs)


def test_price_override_needs_a_currency():
    with pytest.raises(ValueError, match="currency"):
        build_factors("FRA", price_per_kwh=0.1)


def test_factors_validate_themselves():
    with pytest.raises(ValueError, match="PUE"):
        Factors("FRA", 50.0, "static", "x", pue=0.5, pue_ref="x")


def test_table_lookups():
    assert pue_for("azure")[0] == pytest.approx(1.18)
    assert pue_for("nonesuch")[0] == pytest.approx(1.58)
    kg, years, ref = embodied_for("gpu")
    assert (kg, years) == (150.0, 6.0) and ref


def _factors(**changes) -> Factors:
    base = dict(
        zone="FRA",
        intensity_g_per_kwh=50.0,
        intensity_source="static",
        intensity_ref="t",
        pue=1.2,
        pue_ref="t",
        price_per_kwh=0.2,
        currency="EUR",
        usd_per_gpu_hour=3.6,
        embodied_kgco2e=150.0,
        lifetime_years=6.0,
        market_intensity_g_per_kwh=10.0,
    )
    base.update(changes)
    return Factors(**base)


def test_price_query_arithmetic():
    out = price_query(3_600_000.0, 3600.0, _factors())
    assert out["energy_kwh"] == pytest.approx(1.0)
    assert out["facility_energy_kwh"] == pytest.approx(1.2)
    assert out["co2e_g"] == pytest.approx(60.0)
    assert out["market_co2e_g"] == pytest.approx(12.0)
    assert out["energy_cost"] == pytest.approx(0.24)
    assert out["compute_cost_usd"] == pytest.approx(3.6)
    lifetime_s = 6 * 365.25 * 86400
    assert out["embodied_co2e_g"] == pytest.approx(150_000.0 * 3600.0 / lifetime_s)


def test_price_query_unknown_factors_give_none():
    out = price_query(
        1000.0,
        1.0,
        _factors(
            price_per_kwh=None,
            currency=None,
            usd_per_gpu_hour=None,
            embodied_kgco2e=None,
            market_intensity_g_per_kwh=None,
        ),
    )
    assert out["energy_cost"] is None and out["compute_cost_usd"] is None
    assert out["embodied_co2e_g"] is None and out["market_co2e_g"] is None
    assert out["co2e_g"] > 0


@pytest.mark.parametrize(("energy_j", "gpu_s"), [(-1.0, 0.0), (0.0, -1.0), (math.nan, 1.0)])
def test_price_query_rejects_bad_inputs(energy_j, gpu_s):
    with pytest.raises(ValueError):
        price_query(energy_j, gpu_s, _factors())


energies = st.floats(min_value=0.0, max_value=1e12, allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(a=energies, b=energies, gpu_s=st.floats(min_value=0, max_value=1e7))
def test_price_query_is_linear_in_energy(a, b, gpu_s):
    f = _factors()
    pa, pb, pab = price_query(a, gpu_s, f), price_query(b, gpu_s, f), price_query(a + b, gpu_s, f)
    for key in ("energy_kwh", "co2e_g", "market_co2e_g", "energy_cost"):
        assert pab[key] == pytest.approx(pa[key] + pb[key], rel=1e-9, abs=1e-9)
    # GPU-time terms do not depend on energy at all
    assert pab["compute_cost_usd"] == pa["compute_cost_usd"] == pb["compute_cost_usd"]
    assert pab["embodied_co2e_g"] == pa["embodied_co2e_g"]


@settings(max_examples=100, deadline=None)
@given(e=energies, k=st.floats(min_value=0, max_value=1e3))
def test_price_query_scales_with_energy(e, k):
    f = _factors()
    assert price_query(e * k, 0.0, f)["co2e_g"] == pytest.approx(
        k * price_query(e, 0.0, f)["co2e_g"], rel=1e-9, abs=1e-9
    )
