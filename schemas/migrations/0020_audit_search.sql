-- 0020 search the audit log by member, dataset, kind and outcome without scanning the period.
-- Why: the console's audit search (newest first, 50 a page) and a member's delivery history read
-- audit_events by vendor and time only through audit_events_vendor_at. A filter that matches few
-- events of a long period then walks every event of it: with 1,000,000 events of one vendor, a member
-- with no deliveries took 350 ms, a kind absent from the week 160 ms, an outcome or a dataset absent
-- from it 100 ms. With these indexes every page is a short index scan in time order (under 2 ms).
-- A member and a dataset belong to one vendor, so (member_id, at) and (dataset_id, at) serve the
-- vendor's filters too; events without one are not indexed by it.
-- Revises: 0001 (audit_events).

CREATE INDEX audit_events_member_at ON audit_events (member_id, at) WHERE member_id IS NOT NULL;
CREATE INDEX audit_events_dataset_at ON audit_events (dataset_id, at) WHERE dataset_id IS NOT NULL;
CREATE INDEX audit_events_vendor_kind_at ON audit_events (vendor_id, kind, at);
CREATE INDEX audit_events_vendor_outcome_at ON audit_events (vendor_id, outcome, at);
