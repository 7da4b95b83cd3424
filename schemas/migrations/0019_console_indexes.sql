-- 0019 console_indexes: what the console's vendor screens look up, found by index.
-- Why: the usage screens read 30 days of usage_daily (its key leads with the licence,
-- so a period of every licence was a scan of the table); a member's page lists that member's keys,
-- OAuth clients and licences among a vendor's thousands; the member and licence lists are read a
-- page at a time, after the last one shown (keyset pagination).
-- Revises: 0001 (credentials, licences, members), 0003 (usage_daily), 0004 (oauth_clients): new
-- indexes only.

CREATE INDEX usage_daily_day ON usage_daily (day);
CREATE INDEX credentials_member ON credentials (member_id) WHERE member_id IS NOT NULL;
CREATE INDEX oauth_clients_member ON oauth_clients (member_id);
CREATE INDEX licences_member ON licences (member_id);
CREATE INDEX members_vendor_name ON members (vendor_id, name, id);
CREATE INDEX licences_vendor_created ON licences (vendor_id, created_at, id);
