-- 0017 number_text: a `number` column's value in the form it was given, integer or float.
-- Why: jsonb stores a JSON number as numeric, whose text never uses an exponent, so a float such as
-- 1e20 came out as the 21-digit integer 100000000000000000000 (and 1.7976931348623157e308 with 309
-- digits), which JSON readers refuse or turn into integers. An integer of a `number` column is stored
-- without a fraction and within 64 bits (gateway/uploads.py), a float with a fraction or beyond
-- 64 bits, so the stored value tells them apart: an integer is written as stored, a float as its
-- float8 (PostgreSQL 12 or later prints the shortest text that reads back as the same double) with
-- ".0" when that text would read as an integer. NULL for a JSON null or a missing key.
-- Revises: 0007 (record pages are rendered in PostgreSQL).

CREATE FUNCTION float_text(value float8) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN value::text ~ '[.e]' THEN value::text ELSE value::text || '.0' END
$$;

CREATE FUNCTION number_text(value jsonb) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN jsonb_typeof(value) IS DISTINCT FROM 'number' THEN NULL
                WHEN scale(value::numeric) = 0 AND abs(value::numeric) <= 9223372036854775807 THEN value::text
                ELSE float_text(value::numeric::float8) END
$$;
