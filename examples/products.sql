-- The sample table of docker-compose.yml (and of the original pg2kafka's README).
CREATE TABLE products (
  id serial,
  sku text PRIMARY KEY,
  name text NOT NULL,
  price numeric(10, 2)
);
INSERT INTO products (sku, name, price) VALUES
  ('CM01-B', 'Blue Coffee Mug', 7.50),
  ('CM01-R', 'Red Coffee Mug', 7.50);
