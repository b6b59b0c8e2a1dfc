-- footprint schema version 1 (postgresql), as SQLAlchemy created it for footprint 0.1.0
-- before energy_uncertainty_j: the starting point of the v1 -> v2 migration test.
CREATE TABLE queries (
	id SERIAL NOT NULL,
	model VARCHAR NOT NULL,
	tags VARCHAR NOT NULL,
	started_at TIMESTAMP WITH TIME ZONE NOT NULL,
	ended_at TIMESTAMP WITH TIME ZONE NOT NULL,
	duration_s FLOAT NOT NULL,
	time_to_first_token_s FLOAT,
	status VARCHAR NOT NULL,
	error_type VARCHAR,
	input_tokens INTEGER,
	output_tokens INTEGER,
	gpus VARCHAR NOT NULL,
	gpu_seconds FLOAT,
	energy_j FLOAT,
	energy_source VARCHAR NOT NULL,
	cpu_energy_j FLOAT,
	cpu_energy_source VARCHAR NOT NULL,
	host VARCHAR NOT NULL,
	pid INTEGER NOT NULL,
	zone VARCHAR,
	intensity_g_per_kwh FLOAT,
	intensity_source VARCHAR,
	market_intensity_g_per_kwh FLOAT,
	pue FLOAT,
	price_per_kwh FLOAT,
	currency VARCHAR,
	usd_per_gpu_hour FLOAT,
	co2e_g FLOAT,
	market_co2e_g FLOAT,
	embodied_co2e_g FLOAT,
	energy_cost FLOAT,
	energy_cost_usd FLOAT,
	compute_cost FLOAT,
	PRIMARY KEY (id)
);
CREATE INDEX ix_queries_model_started_at ON queries (model, started_at);
CREATE INDEX ix_queries_started_at ON queries (started_at);
CREATE TABLE idle_energy (
	id SERIAL NOT NULL,
	device_uuid VARCHAR NOT NULL,
	minute TIMESTAMP WITH TIME ZONE NOT NULL,
	idle_energy_j FLOAT NOT NULL,
	measured_energy_j FLOAT NOT NULL,
	host VARCHAR NOT NULL,
	pid INTEGER NOT NULL,
	PRIMARY KEY (id),
	UNIQUE (device_uuid, minute, host, pid)
);
CREATE INDEX ix_idle_energy_device_uuid ON idle_energy (device_uuid);
CREATE INDEX ix_idle_energy_minute ON idle_energy (minute);
CREATE TABLE losses (
	id SERIAL NOT NULL,
	recorded_at TIMESTAMP WITH TIME ZONE NOT NULL,
	kind VARCHAR NOT NULL,
	count INTEGER NOT NULL,
	host VARCHAR NOT NULL,
	pid INTEGER NOT NULL,
	PRIMARY KEY (id)
);
CREATE TABLE query_rollups (
	id SERIAL NOT NULL,
	hour TIMESTAMP WITH TIME ZONE NOT NULL,
	group_key VARCHAR NOT NULL,
	model VARCHAR NOT NULL,
	host VARCHAR NOT NULL,
	gpus VARCHAR NOT NULL,
	zone VARCHAR,
	currency VARCHAR,
	intensity_source VARCHAR,
	pue FLOAT,
	price_per_kwh FLOAT,
	usd_per_gpu_hour FLOAT,
	market_intensity_g_per_kwh FLOAT,
	energy_source VARCHAR NOT NULL,
	queries BIGINT NOT NULL,
	errors BIGINT NOT NULL,
	input_tokens BIGINT NOT NULL,
	output_tokens BIGINT NOT NULL,
	gpu_seconds FLOAT NOT NULL,
	energy_j FLOAT NOT NULL,
	measured_queries BIGINT NOT NULL,
	facility_energy_j FLOAT NOT NULL,
	co2e_g FLOAT NOT NULL,
	market_co2e_g FLOAT NOT NULL,
	market_queries BIGINT NOT NULL,
	embodied_co2e_g FLOAT NOT NULL,
	energy_cost_usd FLOAT NOT NULL,
	unconverted_energy_cost FLOAT NOT NULL,
	unconverted_queries BIGINT NOT NULL,
	compute_cost_usd FLOAT NOT NULL,
	duration_s FLOAT NOT NULL,
	intensity_min FLOAT,
	intensity_max FLOAT,
	PRIMARY KEY (id),
	UNIQUE (hour, group_key)
);
CREATE INDEX ix_query_rollups_hour ON query_rollups (hour);
CREATE INDEX ix_query_rollups_model ON query_rollups (model);
CREATE TABLE footprint_meta (
	key VARCHAR NOT NULL,
	value VARCHAR NOT NULL,
	PRIMARY KEY (key)
);
INSERT INTO footprint_meta VALUES ('schema_version', '1');
