-- 0003 usage: what each licence delivered, per day.
-- Why: metering is both the bill and the evidence of provision to specific parties (issue "Member
-- delivery"). Rows are written by the audit writer in the same transaction as the delivery events
-- they count, so usage and the audit log can never disagree. Rows are per writer (log_id): an
-- instance knows its own deliveries exactly and reads only the others' from here (gateway/metering.py).
-- Revises: 0001 (licences).

CREATE TABLE usage_daily (
    licence_id uuid NOT NULL REFERENCES licences,
    day        date NOT NULL,             -- Japan Standard Time
    log_id     text NOT NULL,
    requests   bigint NOT NULL DEFAULT 0,
    records    bigint NOT NULL DEFAULT 0,
    bytes      bigint NOT NULL DEFAULT 0,
    over_soft_quota boolean NOT NULL DEFAULT false,
    PRIMARY KEY (licence_id, day, log_id)
);
