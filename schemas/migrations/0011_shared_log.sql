-- 0011 one shared log for the command line.
-- Why: issue 15 "Fewer, fuller logs". Every CLI invocation started a log of its own: after an hour of
-- ordinary vendor work a deployment held 163 logs, 160 of them from the CLI and 93 empty, and every
-- member was handed all of their checkpoints. Now CLI changes append to one log per deployment
-- (`shared`), one command at a time under an advisory lock, resumed from its tiles (0009); it is
-- registered by its first event, never taken for dead while no command runs, and never ended.
-- Revises: 0002/0008 (audit_logs gains shared).

ALTER TABLE audit_logs ADD COLUMN shared boolean NOT NULL DEFAULT false;
CREATE UNIQUE INDEX audit_logs_one_shared ON audit_logs (shared) WHERE shared AND ended_at IS NULL;
