-- 0007 csv_field: one CSV field as PostgreSQL's COPY ... (FORMAT csv) writes it.
-- Why: record pages are rendered by PostgreSQL as one value (gateway/delivery.py), in CSV as in
-- NDJSON, and a page must be byte for byte what a streamed export (COPY) of the same records gives:
-- NULL is an empty field, and an empty string or one holding a comma, a quote, CR or LF is quoted
-- with its quotes doubled.

CREATE FUNCTION csv_field(value text) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN value IS NULL THEN ''
                WHEN value = '' OR value ~ '[,"\r\n]' THEN '"' || replace(value, '"', '""') || '"'
                ELSE value END
$$;
