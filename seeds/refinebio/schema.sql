-- refine.bio's experiments and samples (the tables the refinebio model reads).
CREATE TABLE IF NOT EXISTS organisms (
    id   bigserial PRIMARY KEY,
    name text NOT NULL UNIQUE
);

CREATE TABLE IF NOT EXISTS platforms (
    id   bigserial PRIMARY KEY,
    name text NOT NULL UNIQUE
);

CREATE TABLE IF NOT EXISTS samples (
    id             bigserial PRIMARY KEY,
    accession_code text NOT NULL UNIQUE,
    organism_id    bigint REFERENCES organisms (id) ON DELETE SET NULL,
    platform_id    bigint REFERENCES platforms (id) ON DELETE SET NULL
);
-- An organism or platform renamed: its samples are found by these.
CREATE INDEX IF NOT EXISTS samples_organism_id ON samples (organism_id);
CREATE INDEX IF NOT EXISTS samples_platform_id ON samples (platform_id);

CREATE TABLE IF NOT EXISTS experiments (
    id             bigserial PRIMARY KEY,
    accession_code text NOT NULL UNIQUE,
    title          text NOT NULL,
    description    text NOT NULL DEFAULT '',
    technology     text NOT NULL CHECK (technology IN ('RNA-SEQ', 'MICROARRAY')),
    is_public      boolean NOT NULL DEFAULT true
);

CREATE TABLE IF NOT EXISTS experiment_samples (
    experiment_id bigint NOT NULL REFERENCES experiments (id) ON DELETE CASCADE,
    sample_id     bigint NOT NULL REFERENCES samples (id) ON DELETE CASCADE,
    PRIMARY KEY (experiment_id, sample_id)
);
-- A sample's experiments (fan-out from a sample, an organism, a platform).
CREATE INDEX IF NOT EXISTS experiment_samples_sample_id ON experiment_samples (sample_id, experiment_id);
