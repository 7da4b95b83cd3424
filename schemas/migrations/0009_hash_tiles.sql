-- 0009 hash tiles: each audit log's Merkle tree stored as C2SP tlog-tiles (c2sp.org/tlog-tiles).
-- Why: issue 15 "Tiles". A receipt recomputed the leaf hashes and the whole tree of its log, seconds
-- of CPU per receipt at millions of events, which any member could ask for again and again. Tiles let
-- a proof read at most two tiles per tile level (gateway/audit/tiles.py), and they are what members
-- and compliance keys read in the tlog-tiles layout (schemas/audit-format.md §3.1).
-- Revises: 0002 (audit_logs gains tiled_size).
-- Upgrade: nothing to do by hand; a log written before this is tiled from its events the first time a
-- proof of it is asked for.

ALTER TABLE audit_logs ADD COLUMN tiled_size bigint NOT NULL DEFAULT 0;  -- leaves the stored tiles hold

-- Tile (level, idx) of a log: the hashes, 32 bytes each, of the complete subtrees of height 8 * level
-- numbered 256 * idx onwards; 256 of them in a full tile, fewer in the right-most tile of a level.
CREATE TABLE audit_tiles (
    log_id text NOT NULL REFERENCES audit_logs,
    level  smallint NOT NULL CHECK (level BETWEEN 0 AND 63),
    idx    bigint NOT NULL CHECK (idx >= 0),
    hashes bytea NOT NULL CHECK (length(hashes) BETWEEN 32 AND 8192 AND length(hashes) % 32 = 0),
    PRIMARY KEY (log_id, level, idx)
);

-- A tile only grows (the new hashes begin with the old), and a full tile never changes: every tree
-- size's tiles stay readable as prefixes. Nothing is deleted.
CREATE FUNCTION audit_tiles_grow_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND length(OLD.hashes) < 8192 AND length(NEW.hashes) > length(OLD.hashes)
            AND substring(NEW.hashes FROM 1 FOR length(OLD.hashes)) = OLD.hashes
            AND (NEW.log_id, NEW.level, NEW.idx) = (OLD.log_id, OLD.level, OLD.idx) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit_tiles only grow (% of tile %/% of log % refused)', TG_OP, OLD.level, OLD.idx, OLD.log_id;
END $$;

CREATE TRIGGER audit_tiles_grow_only BEFORE UPDATE OR DELETE ON audit_tiles
    FOR EACH ROW EXECUTE FUNCTION audit_tiles_grow_only();
CREATE TRIGGER audit_tiles_no_truncate BEFORE TRUNCATE ON audit_tiles
    FOR EACH STATEMENT EXECUTE FUNCTION append_only();

-- Which vendors' events each log holds: members and compliance keys read the checkpoints and tiles of
-- those logs only (GET /v1/audit/checkpoint, /v1/audit/logs/...). Kept by one statement per append.
CREATE TABLE audit_log_vendors (
    vendor_id uuid NOT NULL,
    log_id    text NOT NULL,
    PRIMARY KEY (vendor_id, log_id)
);

INSERT INTO audit_log_vendors (vendor_id, log_id)
    SELECT DISTINCT vendor_id, log_id FROM audit_events WHERE vendor_id IS NOT NULL;

CREATE FUNCTION audit_log_vendors_note() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO audit_log_vendors (vendor_id, log_id)
        SELECT DISTINCT vendor_id, log_id FROM appended WHERE vendor_id IS NOT NULL
        ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;

CREATE TRIGGER audit_log_vendors_note AFTER INSERT ON audit_events
    REFERENCING NEW TABLE AS appended FOR EACH STATEMENT EXECUTE FUNCTION audit_log_vendors_note();
