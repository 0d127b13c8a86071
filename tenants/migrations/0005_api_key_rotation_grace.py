# Key rotation with a grace period, a stable public key id and expiry reminders.
# public_id follows Django's recipe for a unique field on existing rows: add it nullable,
# give every row its own value, then make it unique and required.
from django.db import migrations, models

import tenants.keys


def public_ids_fill(apps, schema_editor):
    ApiKey = apps.get_model("tenants", "ApiKey")
    batch = []
    for key in ApiKey.objects.filter(public_id__isnull=True).only("pk").iterator(chunk_size=2000):
        key.public_id = tenants.keys.api_key_public_id_new()
        batch.append(key)
        if len(batch) >= 2000:
            ApiKey.objects.bulk_update(batch, ["public_id"])
            batch = []
    if batch:
        ApiKey.objects.bulk_update(batch, ["public_id"])


class Migration(migrations.Migration):
    dependencies = [
        ("tenants", "0004_operator_token"),
    ]

    operations = [
        migrations.AddField(
            model_name="apikey",
            name="public_id",
            field=models.CharField(editable=False, max_length=40, null=True),
        ),
        migrations.RunPython(public_ids_fill, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="apikey",
            name="public_id",
            field=models.CharField(
                default=tenants.keys.api_key_public_id_new,
                editable=False,
                help_text="Stable id of this key; survives rotation",
                max_length=40,
                unique=True,
            ),
        ),
        migrations.AddField(
            model_name="apikey",
            name="previous_key_hash",
            field=models.CharField(
                blank=True, editable=False, max_length=64, null=True, unique=True
            ),
        ),
        migrations.AddField(
            model_name="apikey",
            name="previous_valid_until",
            field=models.DateTimeField(
                blank=True,
                help_text="The key before the last rotation works until then",
                null=True,
            ),
        ),
        migrations.AddField(
            model_name="apikey",
            name="rotated_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="apikey",
            name="expiry_reminded_at",
            field=models.DateTimeField(blank=True, editable=False, null=True),
        ),
        migrations.AddField(
            model_name="apikey",
            name="grace_reminded_at",
            field=models.DateTimeField(blank=True, editable=False, null=True),
        ),
    ]
