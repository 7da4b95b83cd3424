-- 0014 member lifecycle: members can be suspended (with a reason) and carry contact details, and a
-- revoked member's name can be taken again.
-- Why: issue 16 "Lifecycle", item 4. A vendor pauses a member (an unpaid invoice, an inquiry) without
-- the finality of revocation, and says why; a revoked member stays revoked for ever, so its name must
-- not stay taken for ever; members are renamed and reached by their contact details.
-- Revises: 0001 (members: status values, the (vendor_id, name) unique constraint).

ALTER TABLE members DROP CONSTRAINT members_status_check;
ALTER TABLE members ADD CONSTRAINT members_status_check CHECK (status IN ('active', 'suspended', 'revoked'));
ALTER TABLE members
    ADD COLUMN status_reason text NOT NULL DEFAULT '' CHECK (length(status_reason) <= 1000),
    ADD COLUMN contact_name  text CHECK (length(contact_name) BETWEEN 1 AND 200),
    ADD COLUMN contact_email text CHECK (length(contact_email) BETWEEN 3 AND 254);

-- One live member per name and vendor; any number of revoked ones (as licences_one_live_per_member_dataset).
ALTER TABLE members DROP CONSTRAINT members_vendor_id_name_key;
CREATE UNIQUE INDEX members_one_live_name ON members (vendor_id, name) WHERE status <> 'revoked';
