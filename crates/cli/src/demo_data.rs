//! The demo's sample database: a small online shop, of pgtide's own making.
//!
//! It is built to exercise what a real migration meets: a partitioned table, enums (and an
//! array of an enum, which forces text COPY), domains with checks, composite types, ranges,
//! arrays, JSON and JSONB, bytea, network types, geometry, tsvector, identity and generated
//! columns, serial and standalone sequences, a table without a primary key, case-sensitive and
//! non-ASCII names, views, a materialized view, functions and triggers. Data comes from
//! `generate_series` with a fixed seed, so every demo run moves the same rows.

/// Schema DDL.
pub const SCHEMA: &str = r#"
CREATE SCHEMA shop;
COMMENT ON SCHEMA shop IS 'pgtide demo: an online shop';
CREATE TYPE shop.order_status AS ENUM ('pending', 'paid', 'shipped', 'delivered', 'cancelled', 'refunded');
CREATE DOMAIN shop.money_amount AS numeric(12,2) CHECK (VALUE >= 0);
CREATE DOMAIN shop.country_code AS char(2) CHECK (VALUE ~ '^[A-Z]{2}$');
CREATE TYPE shop.address AS (street text, city text, postcode text, country shop.country_code);

CREATE TABLE shop.customers (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    uuid uuid NOT NULL UNIQUE,
    email text NOT NULL,
    full_name text NOT NULL,
    "Display Name" varchar(80),
    phone_numbers text[],
    preferences jsonb NOT NULL DEFAULT '{}',
    last_ip inet,
    birth_date date,
    created_at timestamptz NOT NULL DEFAULT now(),
    loyalty_points integer NOT NULL DEFAULT 0,
    email_lower text GENERATED ALWAYS AS (lower(email)) STORED
);
COMMENT ON TABLE shop.customers IS 'People who buy things';
CREATE INDEX customers_email_lower_idx ON shop.customers (email_lower);
CREATE INDEX customers_created_idx ON shop.customers (created_at);

CREATE TABLE shop.products (
    id serial PRIMARY KEY,
    sku text NOT NULL UNIQUE,
    name text NOT NULL,
    description text,
    price shop.money_amount NOT NULL,
    weight_kg real,
    dimensions_cm numeric[],
    tags text[] NOT NULL DEFAULT '{}',
    attributes jsonb,
    thumbnail bytea,
    available_during tstzrange,
    search tsvector,
    discontinued boolean NOT NULL DEFAULT false
);
CREATE INDEX products_tags_idx ON shop.products USING gin (tags);
CREATE INDEX products_search_idx ON shop.products USING gin (search);
CREATE INDEX products_available_idx ON shop.products USING gist (available_during);

CREATE SEQUENCE shop.order_number_seq START 100000;
CREATE TABLE shop.orders (
    id bigint NOT NULL DEFAULT nextval('shop.order_number_seq'),
    customer_id bigint NOT NULL REFERENCES shop.customers (id),
    status shop.order_status NOT NULL,
    status_history shop.order_status[] NOT NULL DEFAULT '{}',
    placed_at timestamptz NOT NULL,
    shipping_address shop.address,
    delivery_window interval,
    total shop.money_amount NOT NULL,
    notes text,
    PRIMARY KEY (id, placed_at)
) PARTITION BY RANGE (placed_at);
ALTER SEQUENCE shop.order_number_seq OWNED BY shop.orders.id;
CREATE TABLE shop.orders_2024 PARTITION OF shop.orders FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE shop.orders_2025 PARTITION OF shop.orders FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE shop.orders_2026 PARTITION OF shop.orders FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE TABLE shop.orders_other PARTITION OF shop.orders DEFAULT;
CREATE INDEX orders_customer_idx ON shop.orders (customer_id);
CREATE INDEX orders_pending_idx ON shop.orders (placed_at) WHERE status = 'pending';

CREATE TABLE shop.order_items (
    order_id bigint NOT NULL,
    placed_at timestamptz NOT NULL,
    line_no smallint NOT NULL,
    product_id integer NOT NULL REFERENCES shop.products (id),
    quantity integer NOT NULL CHECK (quantity > 0),
    unit_price numeric(12,2) NOT NULL,
    discount numeric(5,4) NOT NULL DEFAULT 0,
    PRIMARY KEY (order_id, placed_at, line_no),
    FOREIGN KEY (order_id, placed_at) REFERENCES shop.orders (id, placed_at) DEFERRABLE INITIALLY DEFERRED
);
CREATE INDEX order_items_product_idx ON shop.order_items (product_id);

CREATE TABLE shop."Reviews" (
    id bigserial PRIMARY KEY,
    product_id integer NOT NULL REFERENCES shop.products (id),
    customer_id bigint NOT NULL REFERENCES shop.customers (id),
    rating smallint NOT NULL CHECK (rating BETWEEN 1 AND 5),
    body text,
    helpful_votes integer,
    reviewer_location point,
    created_at timestamp without time zone NOT NULL
);
ALTER TABLE shop."Reviews" ADD CONSTRAINT reviews_body_length CHECK (length(body) < 100000) NOT VALID;

-- An append-only audit log without a primary key.
CREATE TABLE shop.events (
    at timestamptz NOT NULL,
    kind text NOT NULL,
    payload json,
    source_net cidr,
    device macaddr,
    took interval,
    flags bit varying(16),
    precise double precision
);

CREATE TABLE public."straße" (
    id integer PRIMARY KEY,
    "Name" text NOT NULL,
    "ünïcødé" text
);

CREATE FUNCTION shop.touch_loyalty() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.loyalty_points := greatest(NEW.loyalty_points, 0);
    RETURN NEW;
END
$$;
CREATE TRIGGER customers_loyalty BEFORE INSERT OR UPDATE ON shop.customers
    FOR EACH ROW EXECUTE FUNCTION shop.touch_loyalty();

CREATE FUNCTION shop.order_value(p_order bigint) RETURNS numeric LANGUAGE sql STABLE AS $$
    SELECT coalesce(sum(quantity * unit_price * (1 - discount)), 0) FROM shop.order_items WHERE order_id = p_order
$$;

CREATE VIEW shop.customer_orders AS
    SELECT c.id, c.email, count(o.id) AS orders, coalesce(sum(o.total), 0) AS spent
    FROM shop.customers c LEFT JOIN shop.orders o ON o.customer_id = c.id
    GROUP BY c.id, c.email;
CREATE MATERIALIZED VIEW shop.daily_sales AS
    SELECT date_trunc('day', placed_at) AS day, count(*) AS orders, sum(total) AS revenue
    FROM shop.orders WHERE status NOT IN ('cancelled', 'refunded') GROUP BY 1;
CREATE UNIQUE INDEX daily_sales_day_idx ON shop.daily_sales (day);
"#;

/// Data generation; `{scale}` is replaced by a multiplier (1 = about 400,000 rows).
pub const DATA: &str = r#"
SELECT setseed(0.42);
INSERT INTO shop.customers (uuid, email, full_name, "Display Name", phone_numbers, preferences, last_ip, birth_date, created_at, loyalty_points)
SELECT md5('c' || g)::uuid,
       'user' || g || '@example.' || (ARRAY['com','org','net','de','fr'])[1 + g % 5],
       initcap(md5('n' || g)), CASE WHEN g % 7 = 0 THEN NULL ELSE 'Ünïcode ' || g END,
       CASE WHEN g % 3 = 0 THEN ARRAY['+1-555-' || lpad((g % 10000)::text, 4, '0'), NULL] ELSE '{}' END,
       jsonb_build_object('newsletter', g % 2 = 0, 'lang', (ARRAY['en','de','fr','ja'])[1 + g % 4], 'score', g * 1.5),
       CASE WHEN g % 5 = 0 THEN NULL ELSE ('10.' || (g % 250) || '.' || (g % 200) || '.' || (1 + g % 250))::inet END,
       date '1950-01-01' + (g * 37 % 20000),
       timestamptz '2023-01-01 00:00:00+00' + (g * interval '17 minutes'),
       (g * 13) % 5000
FROM generate_series(1, 30000 * {scale}) g;

INSERT INTO shop.products (sku, name, description, price, weight_kg, dimensions_cm, tags, attributes, thumbnail, available_during, search, discontinued)
SELECT 'SKU-' || lpad(g::text, 6, '0'), 'Product ' || g, repeat('Great product number ' || g || '. ', 1 + g % 40),
       (1 + (g * 7919 % 100000) / 100.0)::numeric(12,2),
       CASE WHEN g % 11 = 0 THEN 'NaN'::real WHEN g % 13 = 0 THEN '-0'::real ELSE (g % 500) / 10.0 END,
       ARRAY[(g % 100)::numeric, (g % 37) + 0.5, NULL],
       CASE g % 4 WHEN 0 THEN ARRAY['new'] WHEN 1 THEN ARRAY['sale','summer'] WHEN 2 THEN ARRAY[]::text[] ELSE ARRAY['a"quote','back\slash'] END,
       CASE WHEN g % 4 = 0 THEN NULL ELSE jsonb_build_object('color', (ARRAY['red','green','blue'])[1 + g % 3], 'sizes', jsonb_build_array(g % 5, g % 7)) END,
       decode(md5('t' || g) || md5('u' || g), 'hex'),
       CASE WHEN g % 3 = 0 THEN NULL ELSE tstzrange(timestamptz '2024-01-01' + g * interval '1 hour', timestamptz '2025-01-01' + g * interval '1 hour', '[)') END,
       to_tsvector('english', 'Product ' || g || ' for ' || (ARRAY['kitchen','garden','office'])[1 + g % 3]),
       g % 17 = 0
FROM generate_series(1, 3000 * {scale}) g;

INSERT INTO shop.orders (id, customer_id, status, status_history, placed_at, shipping_address, delivery_window, total, notes)
SELECT 100000 + g, 1 + (g * 7) % (30000 * {scale}),
       (enum_range(NULL::shop.order_status))[1 + g % 6],
       (enum_range(NULL::shop.order_status))[1:1 + g % 4],
       timestamptz '2024-01-01 00:00:00+00' + (g * interval '7 minutes 13 seconds'),
       CASE WHEN g % 9 = 0 THEN NULL ELSE ROW(g || ' Main St', 'City ' || (g % 300), lpad((g % 99999)::text, 5, '0'), (ARRAY['US','DE','FR','JP'])[1 + g % 4])::shop.address END,
       make_interval(days => g % 10, hours => g % 24),
       ((g::int8 * 104729) % 100000 / 100.0)::numeric(12,2),
       CASE WHEN g % 10 = 0 THEN E'note with\ttab and\nnewline and \\ backslash' ELSE NULL END
FROM generate_series(1, 100000 * {scale}) g;
SELECT setval('shop.order_number_seq', 100000 + 100000 * {scale});

INSERT INTO shop.order_items (order_id, placed_at, line_no, product_id, quantity, unit_price, discount)
SELECT o.id, o.placed_at, l, 1 + (o.id * l * 31) % (3000 * {scale}), 1 + (o.id + l) % 5,
       (1 + (o.id * l) % 20000 / 100.0)::numeric(12,2), ((o.id + l) % 20) / 100.0
FROM shop.orders o, generate_series(1, 1 + (o.id % 3)::int) l;

INSERT INTO shop."Reviews" (product_id, customer_id, rating, body, helpful_votes, reviewer_location, created_at)
SELECT 1 + g % (3000 * {scale}), 1 + (g * 3) % (30000 * {scale}), 1 + g % 5,
       CASE WHEN g % 6 = 0 THEN NULL ELSE 'Review ' || g || ': ' || repeat('★', 1 + g % 5) END,
       CASE WHEN g % 4 = 0 THEN NULL ELSE g % 100 END,
       point(g % 180 - 90, g % 360 - 180),
       timestamp '2024-06-01' + g * interval '3 minutes'
FROM generate_series(1, 20000 * {scale}) g;

INSERT INTO shop.events (at, kind, payload, source_net, device, took, flags, precise)
SELECT timestamptz '2024-01-01' + g * interval '1 second', (ARRAY['login','view','cart','pay'])[1 + g % 4],
       json_build_object('n', g, 'ok', g % 2 = 0),
       ('192.168.' || (g % 256) || '.0/24')::cidr,
       ('08:00:2b:' || lpad(to_hex(g % 256), 2, '0') || ':' || lpad(to_hex(g / 256 % 256), 2, '0') || ':01')::macaddr,
       g * interval '1 millisecond',
       (g % 65536)::bit(16)::varbit,
       CASE g % 50 WHEN 0 THEN 'Infinity'::float8 WHEN 1 THEN '-Infinity' WHEN 2 THEN 'NaN' ELSE g / 3.0 END
FROM generate_series(1, 50000 * {scale}) g;

INSERT INTO public."straße" (id, "Name", "ünïcødé")
SELECT g, 'Straße ' || g, CASE WHEN g % 2 = 0 THEN '日本語 ' || g END FROM generate_series(1, 1000) g;

REFRESH MATERIALIZED VIEW shop.daily_sales;
ANALYZE;
"#;
