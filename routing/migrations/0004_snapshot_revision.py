from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('routing', '0003_snapshot_router'),
    ]

    operations = [
        migrations.AddField(
            model_name='routersnapshot',
            name='revision',
            field=models.PositiveIntegerField(
                default=0, editable=False,
                help_text='Counts the changes since the build (label, activation); each web process reloads on a change.'),
        ),
    ]
