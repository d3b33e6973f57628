-- Which life of an integration id a row is: its creation time in ms shifted past 20
-- random bits (`new_incarnation`), so a later integration of an id has a larger one.
-- Messages record it, so an integration deleted and re-created under the same id does not
-- take over its predecessor's unfinished messages. Rows from before get 1, older than any
-- new one; messages from before carry none, which matches anything.
ALTER TABLE integrations ADD COLUMN incarnation BIGINT;
UPDATE integrations SET incarnation = 1 WHERE incarnation IS NULL;
