-- 0008 liveness and leases: which processes are alive, the quota each one holds, and the end of a log.
-- Why: issue 14 "leases that survive crashes". A process killed with kill -9 kept its share of a hard
-- quota for the month and left its last events unprovable, because nothing in PostgreSQL said it was
-- gone. Now each process (one audit log) renews `seen_at` from the database clock while it runs
-- (gateway/liveness.py); one not seen for a few seconds is dead, and a survivor ends its log: it
-- returns the dead process's unspent leases and signs the final checkpoint over its events.
-- Revises: 0002 (audit_logs), 0005 (quota_grants: the grant is now the sum of per-process leases).
-- Upgrade: stop every instance before applying it; the leases of instances still running the old
-- code are forgotten (they would return them to a column that no longer exists).

ALTER TABLE audit_logs
    ADD COLUMN seen_at    timestamptz NOT NULL DEFAULT now(),  -- the last heartbeat (database clock)
    ADD COLUMN ended_at   timestamptz,                         -- set once: no event is appended after it
    ADD COLUMN ended_by   text,                                -- the log of the process that ended it
    ADD COLUMN final_size bigint;                              -- tree size of the final checkpoint, once signed

-- The logs a survivor looks at every second: those still open, and those whose end it still has to
-- finish (sign the final checkpoint). Found without a scan of every log there ever was.
CREATE INDEX audit_logs_open ON audit_logs (seen_at) WHERE ended_at IS NULL;
CREATE INDEX audit_logs_unfinished ON audit_logs (log_id) WHERE final_size IS NULL AND ended_at IS NOT NULL;

-- The hard quota one process holds for a licence and JST month (database clock). The sum over the
-- processes never exceeds the licence's quota; leases are taken under the row lock of quota_grants.
-- When a process ends, its lease shrinks to what its log metered (usage_daily for its log_id).
CREATE TABLE quota_leases (
    licence_id     uuid NOT NULL,
    month          date NOT NULL,
    log_id         text NOT NULL REFERENCES audit_logs,
    records_leased bigint NOT NULL DEFAULT 0 CHECK (records_leased >= 0),
    bytes_leased   bigint NOT NULL DEFAULT 0 CHECK (bytes_leased >= 0),
    PRIMARY KEY (licence_id, month, log_id),
    FOREIGN KEY (licence_id, month) REFERENCES quota_grants
);
CREATE INDEX quota_leases_by_log ON quota_leases (log_id);

ALTER TABLE quota_grants DROP COLUMN records_granted, DROP COLUMN bytes_granted;

-- Called inside every transaction that appends to a log (gateway/audit/writer.py) or leases for it
-- (gateway/metering.py): waits while the log is being ended, and refuses once it is. Ending a log
-- takes the same advisory lock exclusively, so no append can commit after the final checkpoint's
-- size was read, even from a process that was only paused and comes back.
CREATE FUNCTION audit_log_open(log text) RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    ended timestamptz;
    ender text;
BEGIN
    PERFORM pg_advisory_xact_lock_shared(hashtext('audit_logs'), hashtext(log));
    SELECT ended_at, ended_by INTO ended, ender FROM audit_logs WHERE log_id = log;
    IF ended IS NOT NULL THEN
        RAISE EXCEPTION 'audit log % was ended at % by %; this process must restart', log, ended, ender
            USING ERRCODE = 'LPD01';
    END IF;
    RETURN true;
END
$$;
