"""Who owns the GPU decides what $/GPU-hour means (issue 13, "money a finance team can sign").

rented: the provider's on-demand price for that exact GPU model, electricity included.
owned: the purchase price amortised per GPU-hour; electricity is a cost of its own.
No price is ever borrowed from another provider or another GPU model: unknown is None.
"""

from __future__ import annotations

import datetime as dt

import pytest

from footprint.config import Settings, load_file_settings, resolve_settings
from footprint.pricing import (
    OWNED,
    RENTED,
    build_factors,
    default_ownership,
    gpu_capex_for,
    gpu_hour_price,
    gpu_price_for,
    lookup_zone,
    price_query,
)
from footprint.pricing._data import DataFileError, gpu_match, gpu_tokens, read_table
from footprint.pricing.pricer import Pricer
from footprint.storage import rollups
from footprint.storage.columns import PRICING_COLUMNS

H100 = "NVIDIA H100 80GB HBM3"  # the SXM5 module's NVML name
H100_OWNED = 33_600 / (5 * 8760)  # regions/gpu_capex.csv: purchase / (lifetime x 8760 h)


# --- ownership: default by zone, setting, validation -------------------------------------


@pytest.mark.parametrize(
    ("zone", "expected"),
    [
        ("aws:us-east-1", RENTED),
        ("gcp:europe-west1", RENTED),
        ("azure:westeurope", RENTED),
        ("FRA", OWNED),
        ("USA/virginia", OWNED),
        ("CAN/quebec", OWNED),
        ("WORLD", OWNED),
    ],
)
def test_ownership_defaults_to_rented_in_cloud_regions_and_owned_elsewhere(zone, expected):
    assert default_ownership(lookup_zone(zone)) == expected
    factors = build_factors(zone, gpu_model=H100)
    assert factors.ownership == expected and "ownership" not in factors.overrides


def test_ownership_setting_overrides_the_default_and_is_named_an_override():
    owned_in_cloud = build_factors("aws:us-east-1", gpu_model=H100, ownership=OWNED)
    assert owned_in_cloud.ownership == OWNED and "ownership" in owned_in_cloud.overrides
    assert owned_in_cloud.usd_per_gpu_hour == pytest.approx(H100_OWNED)
    rented_on_premise = build_factors("FRA", gpu_model=H100, ownership=RENTED)
    assert rented_on_premise.ownership == RENTED
    assert rented_on_premise.usd_per_gpu_hour is None  # no provider, no shipped rental price
    assert "on_premise" in rented_on_premise.gpu_price_ref


@pytest.mark.parametrize("value", ["Owned", " rented ", "OWNED"])
def test_settings_normalise_ownership(value):
    assert Settings(ownership=value).ownership == value.strip().lower()


@pytest.mark.parametrize("value", [None, "", "auto"])
def test_settings_without_ownership_mean_by_zone(value):
    assert Settings(ownership=value).ownership is None


@pytest.mark.parametrize("value", ["leased", "own", 1, True])
def test_settings_reject_a_bad_ownership_with_the_allowed_values(value):
    with pytest.raises(ValueError, match="rented, owned"):
        Settings(ownership=value)


def test_ownership_from_the_environment_and_files(tmp_path):
    assert resolve_settings(environ={"FOOTPRINT_OWNERSHIP": "owned"}).ownership == OWNED
    (tmp_path / "footprint.toml").write_text('ownership = "rented"\n')
    assert load_file_settings(tmp_path)["ownership"] == RENTED
    # configure() > environment > footprint.toml
    merged = resolve_settings({"ownership": "owned"}, {"FOOTPRINT_OWNERSHIP": "rented"}, tmp_path)
    assert merged.ownership == OWNED
    with pytest.raises(ValueError, match="ownership"):
        resolve_settings(environ={"FOOTPRINT_OWNERSHIP": "borrowed"})


def test_bad_ownership_is_rejected_by_build_factors():
    with pytest.raises(ValueError, match="ownership"):
        build_factors("FRA", ownership="leased")


# --- $/GPU-hour: rented vs owned vs the user's --------------------------------------------


def test_rented_price_is_that_providers_price_for_that_model():
    aws = build_factors("aws:us-east-1", gpu_model=H100)
    assert aws.usd_per_gpu_hour == pytest.approx(6.88)
    assert "aws p5.48xlarge" in aws.gpu_price_ref and "(2026)" in aws.gpu_price_ref
    gcp = build_factors("gcp:us-central1", gpu_model="NVIDIA H200")
    assert gcp.usd_per_gpu_hour == pytest.approx(10.4365) and "gcp" in gcp.gpu_price_ref


def test_owned_price_is_the_purchase_price_amortised_per_gpu_hour():
    f = build_factors("FRA", gpu_model=H100)
    assert f.ownership == OWNED
    assert f.usd_per_gpu_hour == pytest.approx(33_600 / 43_800)
    ref = f.gpu_price_ref
    assert "owned" in ref and "$33,600.00" in ref and "5 years x 8760 h" in ref
    assert "epoch.ai" in ref and "lifetime:" in ref and "10-K" in ref
    value, ref2 = gpu_capex_for("NVIDIA A100-SXM4-40GB")
    assert value == pytest.approx(12_500 / 43_800) and "nextplatform" in ref2


def test_owned_and_rented_differ_for_the_same_gpu_in_the_same_region():
    rented = build_factors("aws:us-east-1", gpu_model=H100)
    owned = build_factors("aws:us-east-1", gpu_model=H100, ownership=OWNED)
    assert rented.usd_per_gpu_hour == pytest.approx(6.88)
    assert owned.usd_per_gpu_hour == pytest.approx(H100_OWNED)
    # the energy factors are the same: only what a GPU-hour means changes
    assert (rented.price_per_kwh, rented.pue) == (owned.price_per_kwh, owned.pue)


@pytest.mark.parametrize("ownership", [RENTED, OWNED])
def test_the_users_price_wins_whoever_owns_the_gpu(ownership):
    f = build_factors("FRA", gpu_model=H100, ownership=ownership, usd_per_gpu_hour=1.25)
    assert f.usd_per_gpu_hour == 1.25 and f.ownership == ownership
    assert f.gpu_price_ref == f"user override ({ownership})"
    assert "usd_per_gpu_hour" in f.overrides


def test_no_gpu_model_means_no_price():
    assert gpu_hour_price(None, "aws", RENTED) == (None, "no GPU model given")
    assert build_factors("aws:us-east-1").usd_per_gpu_hour is None


# --- the wrong prices of issue 13 -----------------------------------------------------------


@pytest.mark.parametrize("provider", ["aws", "gcp", "azure"])
def test_gh200_never_takes_the_h200_price(provider):
    assert gpu_price_for("NVIDIA GH200 480GB", provider) is None
    assert gpu_capex_for("NVIDIA GH200 480GB") is None
    f = build_factors(f"{provider}:{_a_region(provider)}", gpu_model="NVIDIA GH200 480GB")
    assert f.usd_per_gpu_hour is None and "GH200" in f.gpu_price_ref


def test_h200_nvl_is_not_priced_as_the_sxm_h200():
    assert gpu_price_for("NVIDIA H200", "aws")[0] == pytest.approx(7.912)
    assert gpu_price_for("NVIDIA H200 NVL", "aws") is None


def test_a100_80gb_pcie_on_aws_does_not_take_the_sxm4_40gb_row():
    assert gpu_price_for("NVIDIA A100 80GB PCIe", "aws") is None  # AWS rents no such card
    f = build_factors("aws:us-east-1", gpu_model="NVIDIA A100 80GB PCIe")
    assert f.usd_per_gpu_hour is None  # was 2.7447, the p4d A100-SXM4-40GB price
    assert gpu_price_for("NVIDIA A100 80GB PCIe", "azure")[0] == pytest.approx(3.673)
    # memory size and form factor must match where the row names them
    assert gpu_price_for("NVIDIA A100-SXM4-80GB", "aws")[0] == pytest.approx(3.4309)
    assert gpu_price_for("NVIDIA A100-SXM4-40GB", "aws")[0] == pytest.approx(2.7447)
    assert gpu_price_for("NVIDIA A100-PCIE-40GB", "aws") is None
    assert gpu_capex_for("NVIDIA A100 80GB PCIe") is None  # no 80GB PCIe purchase price
    assert gpu_capex_for("NVIDIA A100-PCIE-40GB")[0] == pytest.approx(12_500 / 43_800)


@pytest.mark.parametrize(
    ("zone", "provider", "own_price", "offer"),
    [
        ("gcp:us-central1", None, 11.0612, "a3-highgpu-8g"),
        ("azure:eastus", None, 12.29, "ND96isr_H100_v5"),
        ("FRA", "on_premise", None, None),
        ("FRA", None, None, None),
    ],
)
def test_an_aws_price_never_applies_elsewhere(zone, provider, own_price, offer):
    f = build_factors(zone, provider=provider, gpu_model=H100, ownership=RENTED)
    assert "p5.48xlarge" not in f.gpu_price_ref
    if own_price is None:  # rented from no provider we know: unknown
        assert f.usd_per_gpu_hour is None
        assert gpu_price_for(H100, provider or lookup_zone(zone).provider) is None
    else:  # that provider's own price for the same GPU
        assert f.usd_per_gpu_hour == pytest.approx(own_price) and offer in f.gpu_price_ref


def test_on_premise_h100_is_owned_by_default_and_never_gets_the_p5_price():
    f = build_factors("FRA", provider="on_premise", gpu_model=H100)
    assert f.ownership == OWNED and f.usd_per_gpu_hour == pytest.approx(H100_OWNED)
    assert "p5" not in f.gpu_price_ref


def test_a_provider_setting_selects_whose_prices_apply():
    # a grid zone run on AWS (provider=aws), rented: AWS's price for that exact model
    f = build_factors("USA/virginia", provider="aws", gpu_model=H100, ownership=RENTED)
    assert f.usd_per_gpu_hour == pytest.approx(6.88)
    assert gpu_price_for(H100, None) is None and gpu_price_for(H100, "on_premise") is None


def _a_region(provider: str) -> str:
    return {"aws": "us-east-1", "gcp": "us-central1", "azure": "eastus"}[provider]


# --- whole-token matching -----------------------------------------------------------------


def test_gpu_names_split_into_whole_tokens():
    assert gpu_tokens("NVIDIA A100-SXM4-80GB") == {"nvidia", "a100", "sxm4", "80gb"}
    assert gpu_tokens("NVIDIA GH200 480GB") == {"nvidia", "gh200", "480gb"}
    assert "h200" not in gpu_tokens("NVIDIA GH200 480GB")
    assert gpu_tokens("Tesla T4") == {"tesla", "t4"}


def test_match_specs_require_and_exclude_whole_tokens():
    spec = gpu_match("H200 !NVL !PCIe")
    assert spec.required == {"h200"} and spec.excluded == {"nvl", "pcie"}
    assert spec.matches(gpu_tokens("NVIDIA H200"))
    assert not spec.matches(gpu_tokens("NVIDIA H200 NVL"))
    assert not spec.matches(gpu_tokens("NVIDIA GH200 480GB"))
    assert gpu_match("A100 SXM4 40GB").matches(gpu_tokens("NVIDIA A100-SXM4-40GB"))
    assert not gpu_match("A100 SXM4 40GB").matches(gpu_tokens("NVIDIA A100-SXM4-80GB"))
    assert not gpu_match("L4").matches(gpu_tokens("NVIDIA L40S"))


@pytest.mark.parametrize("bad", ["H100.*NVL", r"\bL4\b", "A100-SXM4", "!NVL", "", "!"])
def test_a_match_that_is_not_whole_tokens_is_a_data_error(tmp_path, bad):
    path = tmp_path / "prices.csv"
    path.write_text(f'gpu_model,match\nX,"{bad}"\n')
    with pytest.raises(DataFileError) as info:
        read_table(path, {"gpu_model": str, "match": gpu_match})
    assert (info.value.line, info.value.column) == (2, "match")


def _regions_with_gpu_prices(folder, *rows: str):
    """A copy of the shipped regions folder whose gpu_prices.csv holds only ``rows``."""
    from footprint.pricing._data import regions_dir

    folder.mkdir()
    for name in (
        "cloud_regions.csv",
        "electricity_prices.csv",
        "pue.csv",
        "embodied.csv",
        "exchange_rates.csv",
        "gpu_capex.csv",
    ):
        (folder / name).write_bytes((regions_dir() / name).read_bytes())
    header = (regions_dir() / "gpu_prices.csv").read_text().splitlines()[0]
    (folder / "gpu_prices.csv").write_text("\n".join((header, *rows)) + "\n")
    return folder


def test_the_most_specific_row_wins(tmp_path):
    folder = _regions_with_gpu_prices(
        tmp_path / "regions",
        "Generic,H100,1.0,aws,x,us-east-1,1,1.0,2026,generic row",
        "SXM,H100 80GB HBM3,2.0,aws,y,us-east-1,1,2.0,2026,specific row",
    )
    price, ref = gpu_price_for(H100, "aws", folder)  # both rows match; the longer spec wins
    assert price == 2.0 and "specific row" in ref
    assert gpu_price_for("NVIDIA H100 PCIe", "aws", folder)[0] == 1.0
    assert gpu_price_for(H100, "aws")[0] == pytest.approx(6.88)  # the shipped table


def test_the_regions_dir_setting_reaches_the_pricer(tmp_path):
    """``FOOTPRINT_REGIONS_DIR`` is the ``regions_dir`` setting, which the pricer reads."""
    folder = _regions_with_gpu_prices(
        tmp_path / "regions", "SXM,H100 80GB HBM3,2.5,aws,y,us-east-1,1,2.5,2026,my row"
    )
    env = {"FOOTPRINT_REGIONS_DIR": str(folder), "FOOTPRINT_REGION": "aws:us-east-1"}
    settings = resolve_settings({}, environ=env, directory=tmp_path)
    assert settings.regions_dir == str(folder)
    record = {"started_at": dt.datetime(2026, 3, 1, 12, tzinfo=dt.timezone.utc), "energy_j": None}
    Pricer(settings, H100, env={}).apply(record)
    assert record["usd_per_gpu_hour"] == 2.5 and "my row" in record["gpu_price_source"]


# --- records: unknown is unknown ----------------------------------------------------------


def _priced(region: str, gpu_model: str | None, **settings) -> dict:
    pricer = Pricer(Settings(region=region, **settings), gpu_model, env={})
    record = {
        "started_at": dt.datetime(2026, 3, 1, 12, tzinfo=dt.timezone.utc),
        "energy_j": 3_600_000.0,
        "gpu_seconds": 3600.0,
        **dict.fromkeys(PRICING_COLUMNS),
    }
    pricer.apply(record)
    return record


def test_records_carry_ownership_and_where_the_gpu_price_came_from():
    rented = _priced("aws:us-east-1", H100)
    assert rented["ownership"] == RENTED and rented["usd_per_gpu_hour"] == pytest.approx(6.88)
    assert "p5.48xlarge" in rented["gpu_price_source"]
    assert rented["compute_cost"] == pytest.approx(6.88)  # one GPU-hour
    assert rented["energy_cost_usd"] is not None  # shown beside it, never added by pricing
    owned = _priced("FRA", H100)
    assert owned["ownership"] == OWNED
    assert owned["compute_cost"] == pytest.approx(H100_OWNED)
    assert "owned" in owned["gpu_price_source"]
    overridden = _priced("aws:us-east-1", H100, ownership="owned")
    assert overridden["ownership"] == OWNED
    assert overridden["usd_per_gpu_hour"] == pytest.approx(H100_OWNED)


def test_no_gpu_price_gives_null_price_and_null_compute_cost():
    record = _priced("gcp:us-central1", "NVIDIA L40S")  # no GCP L40S price is shipped
    assert record["usd_per_gpu_hour"] is None and record["compute_cost"] is None
    assert "no gcp price" in record["gpu_price_source"]
    assert record["ownership"] == RENTED
    record = _priced("FRA", "NVIDIA GH200 480GB")  # no purchase price either
    assert record["usd_per_gpu_hour"] is None and record["compute_cost"] is None
    assert price_query(1.0, 1.0, build_factors("FRA"))["compute_cost_usd"] is None


def test_no_electricity_price_gives_null_energy_cost():
    record = _priced("AFG", H100)
    assert record["price_per_kwh"] is None and record["currency"] is None
    assert record["energy_cost"] is None and record["energy_cost_usd"] is None
    assert record["co2e_g"] > 0  # the rest is still priced


def test_rollups_key_on_ownership_and_gpu_price_source():
    assert rollups.KEY_COLUMNS[-2:] == ("ownership", "gpu_price_source")
    base = {
        "started_at": dt.datetime(2026, 3, 1, 12, tzinfo=dt.timezone.utc),
        **_priced("aws:us-east-1", H100),
    }
    base.update(
        model="m",
        host="h",
        gpus="[]",
        energy_source="counter",
        status="ok",
        input_tokens=1,
        output_tokens=1,
        duration_s=1.0,
    )
    owned = dict(base, ownership=OWNED, gpu_price_source="capex", compute_cost=0.5)
    older = {k: v for k, v in base.items() if k not in ("ownership", "gpu_price_source")}
    rows = rollups.aggregate([base, owned, older])  # a producer older than the columns
    keyed = {(r["ownership"], r["gpu_price_source"]): r for r in rows}
    assert set(keyed) == {(RENTED, base["gpu_price_source"]), (OWNED, "capex"), (None, None)}
    assert keyed[(OWNED, "capex")]["compute_cost_usd"] == pytest.approx(0.5)
    assert keyed[(RENTED, base["gpu_price_source"])]["compute_cost_usd"] == pytest.approx(6.88)
