-- 0005 quota grants: how much of each licence's hard monthly quota has been leased to instances.
-- Why: hard quotas must hold across several instances without a database round trip per request.
-- Each instance leases a share of the month's quota here (a row lock serialises the leases), then
-- spends it from memory; the sum of leases never exceeds the quota, so neither does delivery.
-- Revises: 0003 (usage).

CREATE TABLE quota_grants (
    licence_id      uuid NOT NULL REFERENCES licences,
    month           date NOT NULL,             -- first day of the JST month
    records_granted bigint NOT NULL DEFAULT 0 CHECK (records_granted >= 0),
    bytes_granted   bigint NOT NULL DEFAULT 0 CHECK (bytes_granted >= 0),
    PRIMARY KEY (licence_id, month)
);
