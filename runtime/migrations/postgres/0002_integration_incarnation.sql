-- Which life of an integration id a row is: a random number chosen when it is created.
-- Messages record it, so an integration deleted and re-created under the same id does not
-- take over its predecessor's unfinished messages. NULL (rows from before): unknown,
-- matches any message.
ALTER TABLE integrations ADD COLUMN incarnation BIGINT;
