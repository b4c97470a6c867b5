-- The build alias (<alias>_building) lives while a build runs and for one batch's life after
-- it ends (sync.batch_timeout + sync.request_timeout: a batch that chose its targets while
-- the build ran may still write through it); then a worker removes it and records it here.
ALTER TABLE tidemark.reindexes ADD COLUMN build_alias_dropped boolean NOT NULL DEFAULT false;
