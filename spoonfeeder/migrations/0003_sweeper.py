from django.db import migrations, models


def add_schedule(apps, schema_editor):
    # A sweeper runs while there is work; this one a minute starts it if everything else failed
    # to (a lost message, every worker killed at once).
    apps.get_model("django_q", "Schedule").objects.update_or_create(
        name="Sweep: re-drive orphaned work",
        defaults={"func": "spoonfeeder.tasks.sweep", "schedule_type": "I", "minutes": 1, "repeats": -1},
    )


def remove_schedule(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(func="spoonfeeder.tasks.sweep").delete()


class Migration(migrations.Migration):
    dependencies = [
        ("spoonfeeder", "0002_prune_schedule"),
    ]

    operations = [
        migrations.CreateModel(
            name="Sweeper",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("worker", models.CharField(blank=True, max_length=100)),
                ("heartbeat", models.DateTimeField(blank=True, null=True)),
            ],
        ),
        migrations.RunPython(add_schedule, remove_schedule),
    ]
